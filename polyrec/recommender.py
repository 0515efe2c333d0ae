"""The user-facing estimator: fit, evaluate, predict, recommend, save, load."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from polyrec.config import Config
from polyrec.data.dataset import Catalog, EvalData, PreparedData, prepare
from polyrec.data.features import EncodedSide, FeatureEncoder
from polyrec.data.tables import DataError, Tables, load_tables
from polyrec.evaluate.evaluator import evaluate, predict_logits
from polyrec.models.layers import FeatureTables
from polyrec.models.network import MultiTaskModel
from polyrec.serve.bundle import WEIGHTS, check_bundle, read_json, staged_dir, write_json
from polyrec.train.objective import Objective
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

    # ----------------------------------------------------------------- training
    def fit(self, tables: Tables | None = None) -> MultiTaskRecommender:
        """Train on ``tables`` (or the data named in the config) with early stopping on validation."""
        seed_everything(self.config.train.seed, self.config.train.threads)
        return self.fit_prepared(prepare(tables if tables is not None else load_tables(self.config.data), self.config))

    def fit_prepared(self, data: PreparedData) -> MultiTaskRecommender:
        """Train on data already through :func:`~polyrec.data.dataset.prepare` (to reuse one split)."""
        cfg = self.config
        seed_everything(cfg.train.seed, cfg.train.threads)
        self.encoder, self.catalog, self.history = data.encoder, data.catalog, data.user_history
        self.test = data.test
        self.model = self._build(data.users, data.items)
        labels = data.train.labels
        self.model.set_output_bias([float(np.nanmean(labels[:, t].numpy())) if task.kind == "regression" else None
                                    for t, task in enumerate(cfg.tasks)])
        weighting = build_weighting(cfg.weighting, cfg.tasks)
        self.result = train(self.model, self.objective, weighting, data.train, data.valid,
                            len(self.catalog.item_ids), cfg.train)
        return self

    def _build(self, users: EncodedSide, items: EncodedSide) -> MultiTaskModel:
        return MultiTaskModel(FeatureTables(users, items), self.encoder.num_embeddings, len(self.config.tasks),
                              self.config.model)

    def _require_model(self) -> MultiTaskModel:
        if self.model is None:
            raise RuntimeError("this recommender is not trained: call fit() or MultiTaskRecommender.load(run_dir)")
        return self.model

    # --------------------------------------------------------------- evaluation
    def evaluate(self, ranking: bool | None = None) -> dict:
        """Test-split metrics per task, per joint task and (optionally) full-catalog ranking."""
        model = self._require_model()
        ranking = self.config.eval.ranking if ranking is None else ranking
        return evaluate(model, self.objective, self.test, len(self.catalog.item_ids), self.config.eval.ks, ranking)

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
            raise ValueError(f"predict: {len(users)} users but {len(items)} items; pass one user per item")
        u = torch.tensor([self._user_index(x) for x in users], dtype=torch.long)
        i = torch.tensor([self._item_index(x) for x in items], dtype=torch.long)
        scores = self.objective.scores(predict_logits(model, u, i))
        return pd.DataFrame({"user_id": [str(x) for x in users], "item_id": [str(x) for x in items],
                             **{k: v.numpy() for k, v in scores.items()}})

    def recommend(self, user, k: int = 10, exclude_seen: bool = True) -> list[dict]:
        """Top-``k`` items for ``user`` with the score of every task; items the user already
        interacted with (train and valid periods) are left out."""
        model = self._require_model()
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        u = self._user_index(user)
        n_items = len(self.catalog.item_ids)
        scores = self.objective.scores(predict_logits(model, torch.full((n_items,), u), torch.arange(n_items)))
        rank_by = self._rank_by()
        ranking = scores[rank_by].clone()
        if exclude_seen and u in self.history:
            ranking[torch.tensor(self.history[u])] = -np.inf
        top = torch.sort(ranking, descending=True, stable=True).indices[:k]
        top = top[torch.isfinite(ranking[top])]
        return [{"rank": r + 1, "item_id": self.catalog.item_ids[i], "title": self.catalog.titles[i],
                 "score": float(scores[rank_by][i]), **{name: float(v[i]) for name, v in scores.items()}}
                for r, i in enumerate(top.tolist())]

    def _rank_by(self) -> str:
        """Score to rank by: eval.rank_by, else the first binary task (dependents by their joint)."""
        tasks, name = self.config.tasks, self.config.eval.rank_by
        task = next(t for t in tasks if t.name == name) if name else next(
            (t for t in tasks if t.kind == "binary"), tasks[0])
        return self.objective.ranking_score_name(task)

    # ------------------------------------------------------------- persistence
    def save(self, path: str | Path, metrics: dict | None = None) -> Path:
        """Write the run directory atomically: it appears complete or not at all."""
        model = self._require_model()
        with staged_dir(Path(path)) as tmp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / WEIGHTS)
            write_json(tmp / "config.json", self.config.model_dump())
            write_json(tmp / "features.json", self.encoder.to_json())
            write_json(tmp / "catalog.json", self.catalog.to_json())
            users = np.concatenate([np.full(len(v), u) for u, v in self.history.items()])
            items = np.concatenate(list(self.history.values()))
            pd.DataFrame({"user": users, "item": items}).to_parquet(tmp / "history.parquet")
            self.test.save(tmp / "eval" / "test", self.objective.names)
            if self.result is not None:
                with (tmp / "train_log.jsonl").open("w") as log:
                    for record in self.result.history:
                        log.write(json.dumps(record) + "\n")
            if metrics is not None:
                write_json(tmp / "metrics.json", metrics)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> MultiTaskRecommender:
        path = check_bundle(Path(path))
        rec = cls(Config.model_validate(read_json(path / "config.json")))
        rec.encoder = FeatureEncoder.from_json(read_json(path / "features.json"))
        catalog = read_json(path / "catalog.json")
        rec.catalog = Catalog(catalog["user_ids"], catalog["item_ids"], catalog["titles"])
        state = load_file(path / WEIGHTS)
        n_user_multi = len(rec.encoder.side_specs("user", "multi"))
        multi = [state[k] for k in sorted((k for k in state if k.startswith("tables.multi_")),
                                          key=lambda k: int(k.rsplit("_", 1)[1]))]
        side = lambda s, m: EncodedSide(state[f"tables.{s}_cat"], m, state[f"tables.{s}_num"])  # noqa: E731
        rec.model = rec._build(side("user", multi[:n_user_multi]), side("item", multi[n_user_multi:]))
        rec.model.load_state_dict(state)
        history = pd.read_parquet(path / "history.parquet")
        rec.history = {int(u): g["item"].to_numpy() for u, g in history.groupby("user")}
        rec.test = EvalData.load(path / "eval" / "test", rec.objective.names)
        return rec
