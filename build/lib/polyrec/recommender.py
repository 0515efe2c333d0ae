"""The user-facing estimator: fit, evaluate, predict, recommend, add new items and users, save, load."""
from __future__ import annotations

import copy
import functools
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from polyrec.config import Config
from polyrec.data.dataset import PreparedData, prepare
from polyrec.data.rows import EvalData, Samples, history_pairs, interaction_rows
from polyrec.data.features import EncodedSide
from polyrec.data.sources import load_tables
from polyrec.data.tables import Tables, ids, new_rows, table_time, validate_labels
from polyrec.errors import DataError, RunError, UnknownIdError
from polyrec.evaluate.evaluator import evaluate, predict_logits
from polyrec.models.network import MultiTaskModel, model_for
from polyrec.objective import Objective
from polyrec.rundir import CHECKPOINT, RunWriter
from polyrec.serve.bundle import (
    Bundle,
    check_model_source,
    read_bundle,
    write_bundle,
    write_json,
)
from polyrec.serve.explain import attended_items, nearest_items
from polyrec.serve.rerank import Diversity, Exposure, field_vectors, fuse, topk_items
from polyrec.text.inputs import encode_text
from polyrec.train.log import TrainLog
from polyrec.values import token
from polyrec.train.trainer import TrainResult, seed_everything, train
from polyrec.weighting import build_weighting


class MultiTaskRecommender:
    """Multi-task recommender configured by a :class:`~polyrec.config.Config`.

    >>> rec = MultiTaskRecommender(Config.from_yaml("configs/ml100k.yaml")).fit()
    >>> rec.evaluate()["watch"]["auc"]
    >>> rec.recommend("42", k=10)
    >>> rec.save("runs/ml100k"); MultiTaskRecommender.load("runs/ml100k")
    """

    def __init__(self, config: Config):
        self.config = config
        self.objective = Objective.from_config(config)
        self.model: MultiTaskModel | None = None
        self.result: TrainResult | None = None
        self.run_dir: Path | None = None   # set by load(): where its exports and indexes go by default
        self.text_model_named = False      # load(text_model=...): the caller chose the language model
        self.onnx = None                    # an OnnxScorer that scores instead of the model (use_onnx)
        self._ann = None                    # the retrieval head's item index, built on first use
        self._ann_lock = threading.Lock()   # faiss does not search and insert safely at the same time
        self.past = None                    # the known event log given rows read at their time (PastEvents)

    # ----------------------------------------------------------------- training
    def fit(self, tables: Tables | None = None, log_dir: str | Path | None = None,
            resume: bool = False) -> MultiTaskRecommender:
        """Train on ``tables`` (or the data named in the config) with early stopping on validation.

        ``log_dir``: write the training log there as training goes (see :mod:`polyrec.train.log`),
        and checkpoints (:mod:`polyrec.train.checkpoint`); ``resume``: continue from the checkpoint
        there, where an earlier ``fit`` with this config was killed.
        """
        data = prepare(tables if tables is not None else load_tables(self.config.data), self.config)
        return self.fit_prepared(data, log_dir=log_dir, resume=resume)

    def fit_prepared(self, data: PreparedData, objective: Objective | None = None,
                     log_dir: str | Path | None = None, on_epoch=None, resume: bool = False
                     ) -> MultiTaskRecommender:
        """Train on data already through :func:`~polyrec.data.dataset.prepare` (to reuse one split).

        The language model encodes the catalog's texts here, when the config has a text section
        and ``data`` has none yet. ``objective`` replaces the config's training losses
        (distillation adds teacher terms); evaluation always uses the config's own.
        ``on_epoch``: called with each epoch's record (see :func:`polyrec.train.trainer.train`).
        """
        cfg = self.config
        if resume and log_dir is None:
            raise RunError("resume=True continues from the checkpoint in log_dir: pass the log_dir of the run "
                           "to continue")
        if cfg.text is not None and data.text is None:
            data = data.with_text(encode_text(cfg.text, data.user_table, data.item_table, cfg.train.progress))
        seed_everything(cfg.train.seed, cfg.train.threads)
        self.encoder, self.catalog, self.history = data.encoder, data.catalog, data.user_history
        self.test, self.text = data.test, data.text
        self.past = data.histories.known_events if data.histories is not None else None
        item_encoder = None
        if cfg.text is not None and cfg.text.mode == "lora":
            from polyrec.text.lora import LoraItemEncoder
            item_encoder = LoraItemEncoder.for_catalog(cfg.text, data.text.item_texts, data.text.item_whitening)
        self.model = model_for(cfg, data, item_encoder)
        means = data.train.label_means()
        self.model.set_output_bias([float(means[t]) if task.kind == "regression" else None
                                    for t, task in enumerate(cfg.tasks)])
        weighting = build_weighting(cfg.weighting, cfg.tasks)
        log = TrainLog(log_dir, self.objective.names, cfg.weighting.method) if log_dir is not None else None
        result = None
        try:
            result = train(self.model, objective or self.objective, weighting, data.train, data.valid,
                           len(self.catalog.item_ids), cfg.train, log, on_epoch,
                           Path(log_dir) / CHECKPOINT if log_dir is not None else None, resume)
        finally:
            if log is not None:
                log.close(result)
        if cfg.cold_start is not None and cfg.cold_start.method == "align":
            self.model.align_generators()
        if cfg.retrieval is not None:
            self.model.fit_retrieval(data.train, self._retrieval_task(), cfg.retrieval, cfg.train.batch_size,
                                     cfg.train.seed)
        self.result = result
        return self

    def _require_model(self) -> MultiTaskModel:
        if self.model is None:
            raise DataError("this recommender is not trained: call fit() or MultiTaskRecommender.load(run_dir)")
        return self.model

    # --------------------------------------------------------------- evaluation
    def evaluate(self, rows: pd.DataFrame | None = None, ranking: bool | None = None, progress: bool = False) -> dict:
        """Metrics per task and per joint task and (``eval.ranking``) full-catalog ranking, on the
        test split or on the labelled ``rows`` given (user, item and label columns). Ranking scores
        every item a user has not interacted with in the run's train and valid periods, against
        the evaluated rows' interactions. With cold items (``data.cold_items``) their rows are also
        reported apart, under ``cold_items``. Metrics that do not apply are left out, and
        ``notes`` says why."""
        model = self._require_model()
        data = self.test if rows is None else self._eval_rows(rows)
        if data is None:
            raise RunError("this run directory has no test split (eval/test is missing); restore it or train "
                           "the run again to evaluate it")
        ranking = self.config.eval.ranking if ranking is None else ranking
        notes = {}
        if ranking and self.config.data.item_col is None:
            ranking, notes["ranking"] = False, "the dataset has no items (data.item_col is null): nothing to rank"
        n_items, ks = len(self.catalog.item_ids), self.config.eval.ks
        vectors = self.field_vectors if ranking else None   # for the listed items only (ild@K)
        out = evaluate(model, self.objective, data, n_items, ks, ranking, progress, vectors)
        if self.catalog.cold_item_ids:
            cold = np.array([self.catalog.item_index[i] for i in self.catalog.cold_item_ids])
            out["cold_items"] = evaluate(model, self.objective, data.restrict_items(cold), n_items, ks, ranking,
                                         item_vectors=vectors)
        if notes:
            out["notes"] = {**out.get("notes", {}), **notes}
        return out

    def _eval_rows(self, rows: pd.DataFrame) -> EvalData:
        """Given labelled rows as a split: interactions are the rows whose root task is positive, and
        the run's own train and valid interactions are excluded from ranking."""
        samples = self._samples(self._labelled(rows, "evaluation rows"))
        positive = interaction_rows(samples.labels.numpy(), self.config.tasks)
        seen_user, seen_item = history_pairs(self.history)
        return EvalData(samples, samples.subset(positive), torch.from_numpy(seen_user), torch.from_numpy(seen_item))

    def _labelled(self, rows: pd.DataFrame, what: str) -> pd.DataFrame:
        """``rows`` with every task's label column present and checked (see :func:`validate_labels`)."""
        missing = [t.col for t in self.config.tasks if t.col not in rows]
        if missing:
            raise DataError(f"{what}: missing label column(s) {missing}; the run was trained on the tasks "
                            f"{[(t.name, t.col) for t in self.config.tasks]}")
        return validate_labels(rows.reset_index(drop=True), self.config, what)

    def _samples(self, rows: pd.DataFrame, at_their_time: bool = True) -> Samples:
        """``rows`` (user, item and, where present, label columns) as catalog indices; ids the run
        does not know are an error naming the rows. When the model reads histories or statistics,
        each row reads them as of its own time (``data.time_col``, which the rows must then have),
        from the train and valid periods' interactions before it; ``at_their_time`` False: as of now
        (rows that happened after the run's data)."""
        spec = self.config.data
        columns = [spec.user_col] + ([spec.item_col] if spec.item_col else [])
        missing = [c for c in columns if c not in rows]
        if missing:
            raise DataError(f"rows: missing column(s) {missing}; the run reads users from '{spec.user_col}'"
                            + (f" and items from '{spec.item_col}'" if spec.item_col else ""))
        index = {}
        for column, known, what in ((spec.user_col, self.catalog.user_index, "users"),
                                    (spec.item_col, self.catalog.item_index, "items")):
            if column is None:
                index[what] = np.zeros(len(rows), np.int64)
                continue
            mapped = ids(rows[column], "rows", column).map(known)
            unknown = mapped.isna()
            if unknown.any():
                raise DataError(f"rows: column '{column}' names {int(unknown.sum())} {what} the run does not know, "
                                f"e.g. {rows.loc[unknown, column].astype(str).unique()[:3].tolist()} at rows "
                                f"{rows.index[unknown][:5].tolist()}; add them first (add_{what}) or leave those "
                                "rows out")
            index[what] = np.array(mapped, dtype=np.int64)
        labels = np.stack([rows[t.col].to_numpy(np.float32) if t.col in rows else np.full(len(rows), np.nan, np.float32)
                           for t in self.config.tasks], 1)
        context = self._moments(rows, index["users"], index["items"]) if at_their_time else {}
        return Samples(torch.from_numpy(index["users"]), torch.from_numpy(index["items"]), torch.from_numpy(labels),
                       **context)

    def _moments(self, rows: pd.DataFrame, users: np.ndarray, items: np.ndarray) -> dict[str, torch.Tensor]:
        """What ``rows`` read at their own time (see :meth:`_samples`); nothing for a model that reads
        neither histories nor statistics."""
        if not self.config.reads_events:
            return {}
        time_col = self.config.data.time_col
        if time_col not in rows:
            raise DataError(f"rows: this run reads each row's history and statistics as of the row's time, and the "
                            f"rows have no time column '{time_col}'; add it (a time after the run's data scores "
                            "them as of now)")
        if self.past is None:
            raise RunError("this run directory has no events.parquet (written by polyrec since rows are scored at "
                           "their own time); train it again to score given rows")
        return self.past.context(self.config, users, items, table_time(rows[time_col], "rows").to_numpy(np.float64))

    def predict_rows(self, rows: pd.DataFrame, progress: bool = False) -> pd.DataFrame:
        """``rows`` (any columns, with the user and item columns) with every task's score added as
        ``<name>_score``, scored in batches."""
        model = self._require_model()
        samples = self._samples(rows.reset_index(drop=True))
        batch = 65536
        logits = torch.cat([predict_logits(model, samples.user[a:a + batch], samples.item[a:a + batch],
                                           samples.context(slice(a, a + batch)))
                            for a in tqdm(range(0, len(samples), batch), desc="scoring", unit="batch",
                                          disable=not progress, leave=False)]) if len(samples) else torch.empty(0)
        scores = self.objective.scores(logits.view(len(samples), len(self.config.tasks)))
        return rows.reset_index(drop=True).assign(**{f"{name}_score": v.numpy() for name, v in scores.items()})

    def _user_index(self, user) -> int:
        index = self.catalog.user_index.get(str(user))
        if index is None:
            raise UnknownIdError(f"unknown user id {user!r}: not in the training catalog of "
                            f"{len(self.catalog.user_ids)} users (e.g. {self.catalog.user_ids[:3]})")
        return index

    def _item_index(self, item) -> int:
        index = self.catalog.item_index.get(str(item))
        if index is None:
            raise UnknownIdError(f"unknown item id {item!r}: not in the catalog of {len(self.catalog.item_ids)} items")
        return index

    def predict(self, users: list, items: list) -> pd.DataFrame:
        """Scores of every task for (user, item) pairs given by their ids."""
        self._require_model()
        if len(users) != len(items):
            raise DataError(f"predict: {len(users)} users but {len(items)} items; pass one user per item")
        u = torch.tensor([self._user_index(x) for x in users], dtype=torch.long)
        i = torch.tensor([self._item_index(x) for x in items], dtype=torch.long)
        scores = self.objective.scores(self._logits(u, i))
        return pd.DataFrame({"user_id": [str(x) for x in users], "item_id": [str(x) for x in items],
                             **{k: v.numpy() for k, v in scores.items()}})

    def recommend(self, user, k: int = 10, exclude_seen: bool = True, explain: int = 2, new_slots: int = 0,
                  new_threshold: float = 0.0, exclude: list | None = None, only: list | None = None,
                  fusion: dict[str, float] | None = None, diversity: float | None = None,
                  filters: dict[str, list] | None = None) -> list[dict]:
        """Top-``k`` items for ``user`` with the score of every task; items the user already
        interacted with (train and valid periods) are left out. The model reads the user's whole
        known history (with a history section). Each item lists up to ``explain`` of the user's
        earlier items behind it (``because``): those the history attention weighed most, or with
        item text and no attention, the closest in the language model's space.

        ``new_slots``: reserve up to that many of the ``k`` slots for new items (held out of
        training or added since: ``catalog.cold_item_ids``) whose ranking score (the fused score
        under ``fusion``) is at least ``new_threshold``; off by default (see the README's cold-start section for the trade-off).
        ``exclude`` / ``only``: item ids never to recommend / the only ones that may be;
        ``filters``: item field → values, e.g. ``{"genre": ["Drama"]}`` (an item passes with any
        of a field's values, and every field named).
        ``fusion``: rank by Π score^weight over task scores (default ``eval.fusion``, else
        ``eval.rank_by``); the list's ``score`` is then the fused score. ``diversity``: MMR λ in
        [0, 1] (default ``eval.diversity``) over :meth:`diversity_vectors`."""
        self._require_model()
        if self.config.data.item_col is None:
            raise DataError("this run's dataset has no items (data.item_col is null): there is nothing to recommend; "
                            "score users with predict_rows (polyrec predict) instead")
        if k < 1:
            raise DataError(f"k must be at least 1, got {k}")
        u = self._user_index(user)
        rule = self.ranked_by(fusion)
        fusion = rule["fusion"] if isinstance(rule, dict) else None
        lam = self.config.eval.diversity if diversity is None else diversity
        if not 0 <= lam <= 1:
            raise DataError(f"diversity must be between 0 (plain ranking) and 1, got {lam}")
        if lam and new_slots:
            raise DataError("new_slots and diversity cannot be combined in one list yet; use one of them")
        history = self.history.get(u, np.zeros(0, np.int64))
        pool = self._pool(u, len(history) + (len(exclude) if exclude else 0), only, filters)
        scores = self.objective.scores(self._logits(torch.full((len(pool),), u), pool))
        fused = fuse(scores, fusion) if fusion else scores[rule]
        ranking = fused.clone()
        if exclude_seen and len(history):
            ranking[torch.isin(pool, torch.from_numpy(history))] = -np.inf
        if exclude:
            ranking[torch.isin(pool, torch.tensor([self._item_index(i) for i in exclude]))] = -np.inf
        # a fused list is ranked by Σ w·log s: the threshold, a score, is compared on that scale
        threshold = (np.log(new_threshold) if new_threshold > 0 else -np.inf) if fusion else new_threshold
        exposure = Exposure(self.new_items()[pool], new_slots, threshold) if new_slots else None
        top = topk_items(ranking.unsqueeze(0), k, exposure,
                         Diversity(self.diversity_vectors(pool), lam) if lam else None)[0]
        top = top[torch.isfinite(ranking[top])]
        items = pool[top].tolist()
        because = self._because(u, items, history, explain)
        return [{"rank": r + 1, "item_id": self.catalog.item_ids[i], "title": self.catalog.titles[i],
                 "score": float(fused[p].exp() if fusion else fused[p]),
                 **{name: float(v[p]) for name, v in scores.items()},
                 **({"because": [self.catalog.titles[j] for j in because[r]]} if because else {})}
                for r, (i, p) in enumerate(zip(items, top.tolist()))]

    def _pool(self, user: int, excluded: int, only: list | None, filters: dict[str, list] | None) -> torch.Tensor:
        """The items to score: all, or the retrieval head's candidates (above retrieval.threshold),
        narrowed to ``only`` and ``filters``; the allowed items themselves when they are few."""
        allowed = None
        if only is not None:
            allowed = torch.zeros(len(self.catalog.item_ids), dtype=torch.bool)
            allowed[[self._item_index(i) for i in only]] = True
        if filters:
            matching = self._matching(filters)
            allowed = matching if allowed is None else allowed & matching
        spec = self.config.retrieval
        if allowed is not None and (spec is None or int(allowed.sum()) <= spec.threshold):
            return allowed.nonzero().flatten()
        pool = self._candidates(user, excluded)
        return pool if allowed is None else pool[allowed[pool]]

    def _matching(self, filters: dict[str, list]) -> torch.Tensor:
        """[n_items] bool: items with one of the given values in every named categorical or
        multi-valued item field."""
        tables, encoder = self._require_model().tables, self.encoder
        cat, multi = encoder.side_specs("item", "cat"), encoder.side_specs("item", "multi")
        fields = {s.name: s for s in cat + multi if s.kind != "bucket"}
        matching = torch.ones(len(self.catalog.item_ids), dtype=torch.bool)
        for name, values in filters.items():
            if name not in fields:
                raise DataError(f"filters: '{name}' is not a categorical or multi-valued item feature; filter by one "
                                f"of {sorted(fields)}")
            vocab = encoder.vocab[name]
            unknown = [v for v in values if token(v) not in vocab]
            if unknown or not values:
                raise DataError(f"filters: {name} = {unknown or values} is not among the values the run knows "
                                f"(e.g. {list(vocab)[:5]})")
            wanted = torch.tensor([vocab[token(v)] + encoder.offsets[name] for v in values])
            if fields[name] in cat:
                matching &= torch.isin(tables.item_cat[:, cat.index(fields[name])], wanted)
            else:
                matching &= torch.isin(tables.multi[tables.n_user_multi + multi.index(fields[name])], wanted).any(1)
        return matching

    def _candidates(self, user: int, excluded: int) -> torch.Tensor:
        """Catalog indices to score for ``user``: every item, or for a catalog over
        ``retrieval.threshold`` the ``retrieval.candidates`` nearest in the retrieval head's space
        (``excluded`` more, as that many may be left out)."""
        spec, n_items = self.config.retrieval, len(self.catalog.item_ids)
        if spec is None or n_items <= spec.threshold:
            return torch.arange(n_items)
        query = self.model.retrieval_vectors("user", torch.tensor([user]))
        with self._ann_lock:
            found = self._ready_index().search(query, min(spec.candidates + excluded, n_items))[0]
        return found[(found >= 0) & (found < n_items)]   # a shared index may hold items added to a later fork

    def item_index(self):
        """The approximate nearest-neighbour index of the retrieval head's item vectors (see
        :mod:`polyrec.serve.ann`): read from the run directory when it was exported there
        (:meth:`export_ann`) and still matches the model, else built; grown with items added since."""
        with self._ann_lock:
            return self._ready_index()

    def _ready_index(self):
        from polyrec.serve.ann import ANN_FILE, ItemIndex
        model, n_items = self._require_model(), len(self.catalog.item_ids)
        if model.retrieval is None:
            raise DataError("this run has no retrieval head: train it with a retrieval section")
        index, ef_search = self._ann, self.config.retrieval.ef_search
        if index is None and self.run_dir is not None and (self.run_dir / ANN_FILE).exists():
            check = model.retrieval_vectors("item", torch.arange(min(n_items, 100)))
            index = self._ann = ItemIndex.load(self.run_dir / ANN_FILE, check, ef_search)
        if index is None:
            self._ann = index = ItemIndex(model.retrieval_vectors("item"), ef_search=ef_search)
        if len(index) < n_items:
            index.add(model.retrieval_vectors("item", torch.arange(len(index), n_items)))
        return index

    def export_ann(self, path: str | Path | None = None, overwrite: bool = False) -> Path:
        """Write the item index (default: ``items.faiss`` in the run directory it was loaded from),
        so serving reads it instead of building it (minutes for a million items); an earlier
        export is replaced only with ``overwrite``."""
        from polyrec.serve.ann import ANN_FILE
        if path is None and self.run_dir is None:
            raise DataError("export_ann: give a path (this recommender was not loaded from a run directory)")
        return self.item_index().save(Path(path) if path else self.run_dir / ANN_FILE, overwrite)

    def _logits(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Every task's output [B, T] for (user, item) catalog indices: the ONNX graph's (use_onnx) or the model's."""
        if self.onnx is not None:
            return self.onnx(user, item)
        return predict_logits(self._require_model(), user, item)

    def export_onnx(self, path: str | Path | None = None, overwrite: bool = False) -> Path:
        """Write the ranking network as ONNX (default: ``model.onnx`` in the run directory it was
        loaded from); see :mod:`polyrec.serve.onnx`."""
        from polyrec.serve.onnx import ONNX_FILE, export_onnx
        if path is None and self.run_dir is None:
            raise DataError("export_onnx: give a path (this recommender was not loaded from a run directory)")
        return export_onnx(self._require_model(), Path(path) if path else self.run_dir / ONNX_FILE,
                           len(self.catalog.user_ids), len(self.catalog.item_ids), overwrite)

    def use_onnx(self, path: str | Path | None = None, threads: int = 1) -> MultiTaskRecommender:
        """Score with an exported ONNX graph in onnxruntime from now on (recommend, predict);
        its catalog is fixed, so adding items or users is refused until it is exported again."""
        from polyrec.serve.onnx import ONNX_FILE, OnnxScorer
        if path is None and self.run_dir is None:
            raise DataError("use_onnx: give a path (this recommender was not loaded from a run directory)")
        path = Path(path) if path else self.run_dir / ONNX_FILE
        if not path.exists():
            raise RunError(f"{path} does not exist: export it first with `polyrec export RUN_DIR --onnx`")
        self.onnx = OnnxScorer(path, len(self.catalog.user_ids), len(self.catalog.item_ids), threads)
        return self

    def onnx_difference(self, path: str | Path, n_items: int = 100, seed: int = 0) -> float:
        """Max abs difference between the ONNX graph at ``path`` and the model, over every task's
        outputs for every user × ``n_items`` random items."""
        from polyrec.serve.onnx import OnnxScorer
        n_users, n_all = len(self.catalog.user_ids), len(self.catalog.item_ids)
        items = torch.randperm(n_all, generator=torch.Generator().manual_seed(seed))[:n_items]
        user, item = torch.arange(n_users).repeat_interleave(len(items)), items.repeat(n_users)
        graph = OnnxScorer(Path(path), n_users, n_all)
        return float(max((graph(user[a:a + 65536], item[a:a + 65536])
                          - predict_logits(self._require_model(), user[a:a + 65536], item[a:a + 65536])).abs().max()
                         for a in range(0, len(user), 65536)))

    def _refuse_if_onnx(self, what: str) -> None:
        if self.onnx is not None:
            raise DataError(f"{what}: this recommender scores with the ONNX graph {self.onnx.path}, whose catalog is "
                            "fixed; serve without --onnx to add items or users, or add them, save and export again")

    def _because(self, user: int, top: list[int], history: np.ndarray, explain: int) -> list[list[int]]:
        """Per recommended item, up to ``explain`` of the user's earlier items behind it: those the
        history attention weighed most, else (with item text) the closest in the language model's space."""
        if self.config.history is not None and self.config.history.encoder == "attention":
            return attended_items(self.model, user, top, explain)
        return nearest_items(self.model.tables.item_text, top, history, explain)

    def similar(self, item, k: int = 10) -> list[dict]:
        """The ``k`` items closest to ``item`` (cosine): in the language model's space with item
        text, else by the model's item vectors (the sum of the item's field embeddings)."""
        model = self._require_model()
        i = self._item_index(item)
        vectors = model.tables.item_text
        if vectors.shape[1] == 0:
            with torch.no_grad():
                vectors = model.nets[0].embedding.table(model.tables.item_cat).sum(1)
        top = nearest_items(vectors, [i], np.delete(np.arange(len(vectors)), i), k)
        cosine = torch.nn.functional.cosine_similarity(vectors[i:i + 1], vectors[top[0]]) if top else []
        return [{"item_id": self.catalog.item_ids[j], "title": self.catalog.titles[j], "similarity": float(c)}
                for j, c in zip(top[0] if top else [], cosine)]

    def field_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """[n, V]: each item's field values (not its ID) as a unit vector, for catalog ``items``
        (default all); what intra-list diversity is measured in, the same for every model of a
        dataset. Cosines between them do not depend on which items are asked together."""
        model = self._require_model()
        tables, item_id = model.tables, self.config.id_feature("item")
        items = slice(None) if items is None else items
        names = [spec.name for spec in self.encoder.side_specs("item", "cat")]
        return field_vectors(tables.item_cat[items], [m[items] for m in tables.multi[tables.n_user_multi:]],
                             names.index(item_id) if item_id in names else None)

    def diversity_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """[n, D]: the space MMR diversifies in, for catalog ``items`` (default all): the language
        model's item vectors with item text, else :meth:`field_vectors`."""
        text = self._require_model().tables.item_text
        return (text if items is None else text[items]) if text.shape[1] else self.field_vectors(items)

    # -------------------------------------------------------------- cold start
    def new_items(self) -> torch.Tensor:
        """[n_items] bool: items no training row shows (held out of training, or added since)."""
        new = torch.zeros(len(self.catalog.item_ids), dtype=torch.bool)
        new[[self.catalog.item_index[i] for i in self.catalog.cold_item_ids]] = True
        return new

    def add_items(self, items: pd.DataFrame) -> list[str]:
        """Make new items scorable and recommendable at once, without retraining: their
        features and text stand in for the ID the model has never seen (it maps to OOV).
        ``items`` has the item id column and any of the feature and template columns."""
        self._refuse_if_onnx("add items")
        items = new_rows(items, self.config, "item")
        ids = self._new_ids(items, self.config.data.item_col, self.catalog.item_index, "item")
        side = self._encode_new(items, "item")
        if self.config.text is not None and self.config.text.item_template:
            side.text, texts = self.text.new_items(items, self._text_encoder)
            if self.model.item_encoder is not None:
                from polyrec.text.lora import tokenize
                self.model.item_encoder.append(*tokenize(self.config.text, texts))
        self.model.tables.append("item", side)
        self.model.append_counts("item", len(ids))
        if self.model.stats is not None:
            self.model.stats.append_items(len(ids))
        title_col = self.config.data.title_col
        titles = items[title_col].fillna("").astype(str).tolist() if title_col in items else ids
        self.catalog.add_items(ids, titles)
        return ids

    def update(self, interactions: pd.DataFrame, epochs: int = 50, lr: float = 0.01, seed: int = 0) -> dict:
        """Learn new items' own ID embeddings from their first interactions, without retraining
        (needs a ``cold_start`` section with side ``item``). ``interactions``: rows with the user and
        item columns and task labels, for new items only (held out of training or added with
        :meth:`add_items`). Each such item gets its own embedding row, started at its generated
        embedding and fine-tuned on these rows (plus ``data.negatives.per_positive`` random users as
        negatives per interaction, 4 if the config samples none) with every other parameter fixed;
        its interaction count grows, so its blend moves from generated to own. The rows also join
        the users' histories (not recommended again). Returns what it did."""
        self._refuse_if_onnx("update")
        model = self._require_model()
        cold = self.config.cold_start
        if cold is None or "item" not in cold.sides:
            raise DataError("update learns new items' ID embeddings from their first interactions: it needs a run "
                            "trained with a cold_start section (sides: [item])")
        rows = self._labelled(interactions, "update rows")
        samples = self._samples(rows, at_their_time=False)   # first interactions of new items: after the run
        trained = ~self.new_items()[samples.item]
        if trained.any():
            names = rows.loc[trained.numpy(), self.config.data.item_col].astype(str).unique()[:5].tolist()
            raise DataError(f"update rows: items {names} were trained on; update learns new items only (held out of "
                            "training or added with add_items); train again to learn from more of their interactions")
        positive = torch.from_numpy(interaction_rows(samples.labels.numpy(), self.config.tasks))
        items = torch.unique(samples.item)
        unassigned = model.items_without_id(items)
        if len(unassigned):
            model.own_item_rows(unassigned, self.encoder.extend(self.config.id_feature("item"),
                                                                [self.catalog.item_ids[i] for i in unassigned.tolist()]))
        model.item_count.index_add_(0, samples.item[positive], torch.ones(int(positive.sum())))
        per_positive = self.config.data.negatives.per_positive or 4
        generator = torch.Generator().manual_seed(seed)
        n_neg = int(positive.sum()) * per_positive
        negative_labels = torch.full((n_neg, len(self.config.tasks)), float("nan"))
        for t, task in enumerate(self.config.tasks):
            if task.kind == "binary" and task.depends_on is None:
                negative_labels[:, t] = 0.0
        train = Samples(torch.cat([samples.user, torch.randint(len(self.catalog.user_ids), (n_neg,),
                                                               generator=generator)]),
                        torch.cat([samples.item, samples.item[positive].repeat_interleave(per_positive)]),
                        torch.cat([samples.labels, negative_labels]))
        loss = model.fit_item_rows(train, model.item_id_rows(items).tolist(), self.objective, epochs, lr)
        self._ann = None   # the items' retrieval vectors moved with their embeddings: index them again
        for u, i in zip(samples.user[positive].tolist(), samples.item[positive].tolist()):
            self.history[u] = np.append(self.history.get(u, np.zeros(0, np.int64)), i)
        return {"items": len(items), "new_rows": len(unassigned), "rows": len(samples), "negatives": n_neg,
                "loss": loss}

    def add_users(self, users: pd.DataFrame, recent: list[list] | None = None) -> list[str]:
        """New users with a profile: recommendable at once by their id. ``recent``: per new user,
        the ids of items they just interacted with (oldest first, no labels): never recommended to
        them, read by the history block and the user-history text, and the source of ``because``."""
        self._refuse_if_onnx("add users")
        users = new_rows(users, self.config, "user")
        ids = self._new_ids(users, self.config.data.user_col, self.catalog.user_index, "user")
        if recent is not None and len(recent) != len(ids):
            raise DataError(f"add_users: {len(ids)} users but {len(recent)} recent-item lists; give one list per user")
        recent = [np.array([self._item_index(i) for i in items], np.int64) for items in (recent or [[]] * len(ids))]
        side = self._encode_new(users, "user")
        if self.config.text is not None and self.config.text.user_template:
            side.text = self.text.new_users(users, self._text_encoder)
        first = len(self.catalog.user_ids)
        self.model.tables.append("user", side)
        self.model.append_counts("user", len(ids))
        if self.model.events is not None:
            self.model.events.append_users(len(ids))
            for row, items in enumerate(recent):
                self.model.events.append_events(first + row, torch.from_numpy(items))
        if self.model.stats is not None:
            self.model.stats.append_users(len(ids))
        self.catalog.add_users(ids)
        for row, items in enumerate(recent):
            if len(items):
                self.history[first + row] = items
        return ids

    def fork(self) -> MultiTaskRecommender:
        """A recommender sharing this one's weights and indexes whose catalog, histories and feature
        tables are its own: add items or users to it while this one goes on serving, then swap."""
        other = copy.copy(self)
        other.model, other.catalog, other.history = self._require_model().fork(), self.catalog.copy(), dict(self.history)
        return other

    def for_profile(self, profile: pd.DataFrame, recent: list | None = None) -> MultiTaskRecommender:
        """A view that scores one new user (a one-row ``profile``, as for :meth:`add_users`; ``recent``
        their items, oldest first) without adding them: its only user is that profile, its id the
        profile's; items, weights and indexes are this recommender's. Nothing here changes."""
        self._refuse_if_onnx("score a new profile")
        users = new_rows(profile, self.config, "user")
        if len(users) != 1:
            raise DataError(f"a profile is one user; got {len(users)} rows")
        recent = np.array([self._item_index(i) for i in recent or []], np.int64)
        side = self._encode_new(users, "user")
        if self.config.text is not None and self.config.text.user_template:
            side.text = self.text.new_users(users, self._text_encoder)
        if self.config.retrieval is not None and len(self.catalog.item_ids) > self.config.retrieval.threshold:
            self.item_index()   # made once here and shared, not once per view
        view = copy.copy(self)
        view.model = self._require_model().for_new_user(side, torch.from_numpy(recent))
        view.catalog = self.catalog.of_users(users[self.config.data.user_col].tolist())
        view.history = {0: recent} if len(recent) else {}
        return view

    def _new_ids(self, frame: pd.DataFrame, id_col: str, known: dict, what: str) -> list[str]:
        ids = frame[id_col].tolist()
        clash = [i for i in ids if i in known]
        if clash or len(set(ids)) != len(ids):
            raise DataError(f"new {what}s: ids in '{id_col}' must be unique and not in the catalog; "
                            f"already known: {clash[:5]}")
        return ids

    def _encode_new(self, frame: pd.DataFrame, side: str) -> EncodedSide:
        """Encode with the fitted vocabularies; absent feature columns count as missing values."""
        frame = frame.copy()
        for spec in self.encoder.specs:
            if spec.source == side and spec.col not in frame:
                frame[spec.col] = None
        return self.encoder.transform(frame.reset_index(drop=True), side)

    @functools.cached_property
    def _text_encoder(self):
        from polyrec.text.encoder import TextEncoder
        spec = self.config.text
        if self.run_dir is not None and not self.text_model_named:   # a run directory may not choose it
            check_model_source(spec.model, self.run_dir)
        return TextEncoder(spec.model, spec.cache_dir, spec.batch_size, progress=False)

    def _retrieval_task(self) -> int:
        """The task whose labels train the retrieval head: retrieval.task, else the first binary task."""
        tasks, name = self.config.tasks, self.config.retrieval.task
        return next(t for t, task in enumerate(tasks) if (task.name == name if name else task.kind == "binary"))

    def ranked_by(self, fusion: dict[str, float] | None = None) -> dict | str:
        """What recommend ranks by with these ``fusion`` weights (default ``eval.fusion``):
        ``{"fusion": weights}``, else the name of the score (see :meth:`_rank_by`)."""
        fusion = self.config.eval.fusion if fusion is None else fusion
        if not fusion:
            return self._rank_by()
        try:
            self.config.check_fusion(fusion, "fusion")
        except ValueError as err:
            raise DataError(str(err)) from None
        return {"fusion": fusion}

    def _rank_by(self) -> str:
        """Score to rank by: eval.rank_by, else the first binary task (dependents by their joint)."""
        tasks, name = self.config.tasks, self.config.eval.rank_by
        task = next(t for t in tasks if t.name == name) if name else next(
            (t for t in tasks if t.kind == "binary"), tasks[0])
        return self.objective.ranking_score_name(task)

    # ------------------------------------------------------------- persistence
    def to_bundle(self) -> Bundle:
        """What serving and evaluation need (see :mod:`polyrec.serve.bundle`)."""
        return Bundle(self.config, self.encoder, self.catalog, self._require_model(), self.text, self.history,
                      self.test, self.past)

    def save(self, path: str | Path, metrics: dict | None = None, overwrite: bool = False) -> Path:
        """Write the run directory atomically: it appears complete or not at all. An existing
        ``path`` must be an earlier polyrec run and ``overwrite`` True; nothing else is replaced."""
        bundle = self.to_bundle()
        with RunWriter(path, overwrite) as run:
            write_bundle(run.staging, bundle)
            if self.result is not None:
                TrainLog.replay(run.staging, self.objective.names, self.config.weighting.method, self.result)
            if metrics is not None:
                write_json(run.staging / "metrics.json", metrics)
            return run.commit()

    @classmethod
    def load(cls, path: str | Path, text_model: str | None = None) -> MultiTaskRecommender:
        """A run directory's recommender. The run's files decide nothing about where files are
        written; ``text_model`` names the language model to use (needed when the run names a
        local path; see :func:`polyrec.serve.bundle.check_model_source`)."""
        bundle = read_bundle(Path(path), text_model)
        rec = cls(bundle.config)
        rec.encoder, rec.catalog, rec.model, rec.text = bundle.encoder, bundle.catalog, bundle.model, bundle.text
        rec.history, rec.test, rec.past = bundle.history, bundle.test, bundle.past
        rec.run_dir, rec.text_model_named = Path(path), text_model is not None
        return rec
