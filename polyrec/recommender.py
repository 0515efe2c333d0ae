"""The user-facing estimator: fit, evaluate, predict, recommend, save, load."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from polyrec.config import Config
from polyrec.data.dataset import Catalog, EvalData, PreparedData, prepare
from polyrec.data.features import EncodedSide, FeatureEncoder
from polyrec.data.tables import Tables, load_tables, new_rows
from polyrec.errors import DataError, RunError
from polyrec.evaluate.evaluator import evaluate, predict_logits
from polyrec.models.network import MultiTaskModel, build_model
from polyrec.rundir import RunWriter
from polyrec.serve.bundle import (HISTORY, TEST_SPLIT, TEXT_WEIGHTS, WEIGHTS, check_bundle, load_weights,
                                  check_model_source, read_config, read_object, read_parquet, reading,
                                  write_json)
from polyrec.serve.explain import nearest_items
from polyrec.text.inputs import TextInputs
from polyrec.text.templates import render
from polyrec.train.log import TrainLog
from polyrec.train.objective import Objective
from polyrec.train.trainer import TrainResult, seed_everything, train
from polyrec.weighting import build_weighting

LORA_BUFFERS = ("input_ids", "attention_mask", "whiten_mean", "whiten_projection")


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
        self.run_dir: Path | None = None   # set by load(): its language model name must be checked

    # ----------------------------------------------------------------- training
    def fit(self, tables: Tables | None = None, log_dir: str | Path | None = None) -> MultiTaskRecommender:
        """Train on ``tables`` (or the data named in the config) with early stopping on validation.

        ``log_dir``: write the training log there as training goes (see :mod:`polyrec.train.log`).
        """
        seed_everything(self.config.train.seed, self.config.train.threads)
        data = prepare(tables if tables is not None else load_tables(self.config.data), self.config)
        return self.fit_prepared(data, log_dir=log_dir)

    def fit_prepared(self, data: PreparedData, objective: Objective | None = None,
                     log_dir: str | Path | None = None) -> MultiTaskRecommender:
        """Train on data already through :func:`~polyrec.data.dataset.prepare` (to reuse one split).

        ``objective`` replaces the config's training losses (distillation adds teacher terms);
        evaluation always uses the config's own.
        """
        cfg = self.config
        seed_everything(cfg.train.seed, cfg.train.threads)
        self.encoder, self.catalog, self.history = data.encoder, data.catalog, data.user_history
        self.test, self.text = data.test, data.text
        self.model = self._build(data.users, data.items, self._lora_encoder(data.text))
        labels = data.train.labels
        self.model.set_output_bias([float(np.nanmean(labels[:, t].numpy())) if task.kind == "regression" else None
                                    for t, task in enumerate(cfg.tasks)])
        weighting = build_weighting(cfg.weighting, cfg.tasks)
        log = TrainLog(log_dir, self.objective.names, cfg.weighting.method) if log_dir is not None else None
        try:
            self.result = train(self.model, objective or self.objective, weighting, data.train, data.valid,
                                len(self.catalog.item_ids), cfg.train, log)
        finally:
            if log is not None:
                log.close()
        return self

    def _build(self, users: EncodedSide, items: EncodedSide, item_encoder=None) -> MultiTaskModel:
        return build_model(self.config, self.encoder, users, items, item_encoder)

    def _lora_encoder(self, text: TextInputs | None, state: dict | None = None):
        spec = self.config.text
        if spec is None or spec.mode != "lora":
            return None
        from polyrec.text.lora import LoraItemEncoder, tokenize
        self._check_model_source()
        prefix = "item_encoder."
        if state is not None:
            return LoraItemEncoder(spec, *(state[prefix + k] for k in LORA_BUFFERS))
        w = text.item_whitening
        return LoraItemEncoder(spec, *tokenize(spec, text.item_texts), torch.from_numpy(w.mean),
                               torch.from_numpy(w.projection))

    def _require_model(self) -> MultiTaskModel:
        if self.model is None:
            raise DataError("this recommender is not trained: call fit() or MultiTaskRecommender.load(run_dir)")
        return self.model

    # --------------------------------------------------------------- evaluation
    def evaluate(self, ranking: bool | None = None, progress: bool = False) -> dict:
        """Test-split metrics per task, per joint task and (optionally) full-catalog ranking."""
        model = self._require_model()
        if self.test is None:
            raise RunError("this run directory has no test split (eval/test is missing); restore it or train "
                           "the run again to evaluate it")
        ranking = self.config.eval.ranking if ranking is None else ranking
        return evaluate(model, self.objective, self.test, len(self.catalog.item_ids), self.config.eval.ks, ranking,
                        progress)

    def _user_index(self, user) -> int:
        index = self.catalog.user_index.get(str(user))
        if index is None:
            raise DataError(f"unknown user id {user!r}: not in the training catalog of "
                            f"{len(self.catalog.user_ids)} users (e.g. {self.catalog.user_ids[:3]})")
        return index

    def _item_index(self, item) -> int:
        index = self.catalog.item_index.get(str(item))
        if index is None:
            raise DataError(f"unknown item id {item!r}: not in the catalog of {len(self.catalog.item_ids)} items")
        return index

    def predict(self, users: list, items: list) -> pd.DataFrame:
        """Scores of every task for (user, item) pairs given by their ids."""
        model = self._require_model()
        if len(users) != len(items):
            raise DataError(f"predict: {len(users)} users but {len(items)} items; pass one user per item")
        u = torch.tensor([self._user_index(x) for x in users], dtype=torch.long)
        i = torch.tensor([self._item_index(x) for x in items], dtype=torch.long)
        scores = self.objective.scores(predict_logits(model, u, i))
        return pd.DataFrame({"user_id": [str(x) for x in users], "item_id": [str(x) for x in items],
                             **{k: v.numpy() for k, v in scores.items()}})

    def recommend(self, user, k: int = 10, exclude_seen: bool = True, explain: int = 2) -> list[dict]:
        """Top-``k`` items for ``user`` with the score of every task; items the user already
        interacted with (train and valid periods) are left out. With item text, each item
        lists up to ``explain`` of the user's earlier items closest to it in the language
        model's space (``because``)."""
        model = self._require_model()
        if k < 1:
            raise DataError(f"k must be at least 1, got {k}")
        u = self._user_index(user)
        n_items = len(self.catalog.item_ids)
        scores = self.objective.scores(predict_logits(model, torch.full((n_items,), u), torch.arange(n_items)))
        rank_by = self._rank_by()
        ranking = scores[rank_by].clone()
        history = self.history.get(u, np.zeros(0, np.int64))
        if exclude_seen and len(history):
            ranking[torch.from_numpy(history)] = -np.inf
        top = torch.sort(ranking, descending=True, stable=True).indices[:k]
        top = top[torch.isfinite(ranking[top])].tolist()
        because = nearest_items(model.tables.item_text, top, history, explain)
        return [{"rank": r + 1, "item_id": self.catalog.item_ids[i], "title": self.catalog.titles[i],
                 "score": float(scores[rank_by][i]), **{name: float(v[i]) for name, v in scores.items()},
                 **({"because": [self.catalog.titles[j] for j in because[r]]} if because else {})}
                for r, i in enumerate(top)]

    # -------------------------------------------------------------- cold start
    def add_items(self, items: pd.DataFrame) -> list[str]:
        """Make new items scorable and recommendable at once, without retraining: their
        features and text stand in for the ID the model has never seen (it maps to OOV).
        ``items`` has the item id column and any of the feature and template columns."""
        items = new_rows(items, self.config, "item")
        ids = self._new_ids(items, self.config.data.item_col, self.catalog.item_index, "item")
        side = self._encode_new(items, "item")
        if self.config.text is not None and self.config.text.item_template:
            texts = render(self.config.text.item_template, items, "new item text")
            side.text = torch.from_numpy(self.text.item_whitening(self._text_encoder.encode(texts)))
            if self.model.item_encoder is not None:
                from polyrec.text.lora import tokenize
                self.model.item_encoder.append(*tokenize(self.config.text, texts))
        self.model.tables.append("item", side)
        title_col = self.config.data.title_col
        titles = items[title_col].fillna("").astype(str).tolist() if title_col in items else ids
        self.catalog.add_items(ids, titles)
        return ids

    def add_users(self, users: pd.DataFrame) -> list[str]:
        """New users with a profile and no history: recommendable at once by their id."""
        users = new_rows(users, self.config, "user")
        ids = self._new_ids(users, self.config.data.user_col, self.catalog.user_index, "user")
        side = self._encode_new(users, "user")
        spec = self.config.text
        if spec is not None and spec.user_template:
            # the profile leads the user text; the history part stays zero (no history yet)
            text = np.zeros((len(users), self.model.tables.user_text.shape[1]), np.float32)
            profile = self.text.profile_whitening(self._text_encoder.encode(
                render(spec.user_template, users, "new user text")))
            text[:, :profile.shape[1]] = profile
            side.text = torch.from_numpy(text)
        self.model.tables.append("user", side)
        self.catalog.add_users(ids)
        return ids

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

    def _check_model_source(self) -> None:
        if self.run_dir is not None:
            check_model_source(self.config.text.model, self.run_dir)

    @functools.cached_property
    def _text_encoder(self):
        from polyrec.text.encoder import TextEncoder
        self._check_model_source()
        spec = self.config.text
        return TextEncoder(spec.model, spec.cache_dir, spec.batch_size, progress=False)

    def _rank_by(self) -> str:
        """Score to rank by: eval.rank_by, else the first binary task (dependents by their joint)."""
        tasks, name = self.config.tasks, self.config.eval.rank_by
        task = next(t for t in tasks if t.name == name) if name else next(
            (t for t in tasks if t.kind == "binary"), tasks[0])
        return self.objective.ranking_score_name(task)

    # ------------------------------------------------------------- persistence
    def write_bundle(self, folder: Path) -> None:
        """Write what serving and evaluation need (weights, config, vocabularies, catalog,
        history, test split) into ``folder``; :meth:`save` places it safely."""
        model = self._require_model()
        frozen = model.frozen_keys()
        save_file({k: v.contiguous() for k, v in model.state_dict().items() if k not in frozen}, folder / WEIGHTS)
        if self.text is not None:
            save_file(self.text.tensors(), folder / TEXT_WEIGHTS)
        write_json(folder / "config.json", self.config.model_dump())
        write_json(folder / "features.json", self.encoder.to_json())
        write_json(folder / "catalog.json", self.catalog.to_json())
        users = np.concatenate([np.full(len(v), u) for u, v in self.history.items()])
        items = np.concatenate(list(self.history.values()))
        pd.DataFrame({"user": users, "item": items}).to_parquet(folder / HISTORY)
        if self.test is not None:
            self.test.save(folder / TEST_SPLIT, self.objective.names)

    def save(self, path: str | Path, metrics: dict | None = None, overwrite: bool = False) -> Path:
        """Write the run directory atomically: it appears complete or not at all. An existing
        ``path`` must be an earlier polyrec run and ``overwrite`` True; nothing else is replaced."""
        self._require_model()
        with RunWriter(path, overwrite) as run:
            self.write_bundle(run.staging)
            if self.result is not None:
                TrainLog.replay(run.staging, self.objective.names, self.config.weighting.method, self.result.history,
                                self.result.step_losses, self.result.step_weights)
            if metrics is not None:
                write_json(run.staging / "metrics.json", metrics)
            return run.commit()

    @classmethod
    def load(cls, path: str | Path, text_model: str | None = None) -> MultiTaskRecommender:
        """A run directory's recommender. The run's files decide nothing about where files are
        written; ``text_model`` names the language model to use (needed when the run names a
        local path; see :func:`polyrec.serve.bundle.read_config`)."""
        path = check_bundle(Path(path))
        rec = cls(read_config(path, text_model))
        rec.run_dir = path if text_model is None else None
        with reading(path / "features.json", "polyrec feature vocabularies"):
            rec.encoder = FeatureEncoder.from_json(read_object(path / "features.json", "polyrec feature vocabularies",
                                                               ("specs", "vocab", "offsets", "num_embeddings")))
        catalog = read_object(path / "catalog.json", "a polyrec catalog", ("user_ids", "item_ids", "titles"))
        with reading(path / "catalog.json", "a polyrec catalog"):
            rec.catalog = Catalog(catalog["user_ids"], catalog["item_ids"], catalog["titles"])
        state = load_weights(path / WEIGHTS)
        rec.text = None
        if rec.config.text is not None:
            with reading(path / TEXT_WEIGHTS, "text whitening"):
                item_w, profile_w = TextInputs.whitenings(load_weights(path / TEXT_WEIGHTS))
        try:
            if rec.config.text is not None:
                rec.text = TextInputs(state["tables.item_text"], state["tables.user_text"], item_w, profile_w, [])
            rec.model = rec._model_from_state(state)
        except (KeyError, RuntimeError, ValueError, IndexError) as err:
            raise RunError(f"{path / WEIGHTS} does not match {path / 'config.json'} and features.json "
                           f"({str(err).splitlines()[0][:300]}); were they edited? Train the run again or restore "
                           "them") from None
        history = read_parquet(path / HISTORY)
        with reading(path / HISTORY, "the run's interaction history"):
            # copied: arrays read from parquet are read-only, and torch indexes with them
            rec.history = {int(u): g["item"].to_numpy(copy=True) for u, g in history.groupby("user")}
        rec.test = None
        if (path / TEST_SPLIT).exists():
            with reading(path / TEST_SPLIT, "the run's test split"):
                rec.test = EvalData.load(path / TEST_SPLIT, rec.objective.names)
        return rec

    def _model_from_state(self, state: dict) -> MultiTaskModel:
        n_user_multi = len(self.encoder.side_specs("user", "multi"))
        multi = [state[k] for k in sorted((k for k in state if k.startswith("tables.multi_")),
                                          key=lambda k: int(k.rsplit("_", 1)[1]))]
        side = lambda s, m: EncodedSide(state[f"tables.{s}_cat"], m, state[f"tables.{s}_num"],  # noqa: E731
                                        state[f"tables.{s}_text"])
        model = self._build(side("user", multi[:n_user_multi]), side("item", multi[n_user_multi:]),
                            self._lora_encoder(self.text, state))
        missing, unexpected = model.load_state_dict(state, strict=False)
        frozen = model.frozen_keys()
        if set(missing) - frozen or unexpected:
            raise KeyError(f"missing {sorted(set(missing) - frozen)[:5]}, unexpected {unexpected[:5]}")
        return model
