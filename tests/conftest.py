import copy

import numpy as np
import pandas as pd
import pytest
import torch

from polyrec.config import Config

torch.set_num_threads(2)

BASE = {
    "data": {"interactions": "unused.csv", "user_col": "user", "item_col": "item", "time_col": "ts",
             "title_col": "name", "negatives": {"per_positive": 2, "labels": {"click": 0}}},
    "features": [
        {"name": "user", "source": "user"},
        {"name": "item", "source": "item"},
        {"name": "country", "source": "user"},
        {"name": "age", "source": "user", "kind": "bucket", "boundaries": [20, 40, 60]},
        {"name": "price", "source": "item", "kind": "numeric"},
        {"name": "tags", "source": "item", "kind": "multi"},
    ],
    "tasks": [
        {"name": "click", "kind": "binary"},
        {"name": "buy", "kind": "binary", "depends_on": "click"},
        {"name": "stars", "kind": "regression", "depends_on": "click"},
    ],
    "model": {"arch": "mmoe", "embed_dim": 4, "expert_dims": [16, 8], "tower_dims": [4], "n_experts": 3},
    "train": {"batch_size": 64, "max_epochs": 2, "progress": False, "seed": 1},
    "eval": {"ks": [5]},
}


def make_config(**changes) -> Config:
    raw = copy.deepcopy(BASE)
    overrides = [f"{k.replace('__', '.')}={v}" for k, v in changes.items()]
    return Config.from_dict(raw, overrides)


def make_tables(n_users=30, n_items=40, per_user=10, seed=0):
    from polyrec.data.tables import Tables
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for j, i in enumerate(rng.choice(n_items, per_user, replace=False)):
            buy = float(rng.random() < 0.4)
            rows.append((f"u{u}", f"i{i}", 1000 + j * 10 + u, 1.0, buy, float(rng.integers(1, 6))))
    inter = pd.DataFrame(rows, columns=["user", "item", "ts", "click", "buy", "stars"])
    users = pd.DataFrame({"user": [f"u{u}" for u in range(n_users)],
                          "country": rng.choice(["de", "fr", None], n_users),
                          "age": np.where(rng.random(n_users) < 0.2, np.nan, rng.integers(15, 70, n_users))})
    items = pd.DataFrame({"item": [f"i{i}" for i in range(n_items)], "name": [f"Item {i}" for i in range(n_items)],
                          "price": rng.random(n_items) * 100,
                          "tags": [rng.choice(["a|b", "b", "c|a|d", None]) for _ in range(n_items)]})
    return Tables(inter, users, items)


@pytest.fixture
def config():
    return make_config()


@pytest.fixture
def tables():
    return make_tables()


@pytest.fixture(scope="session")
def ml100k():
    from polyrec.data.movielens import load_movielens_100k
    return load_movielens_100k(verbose=False)


@pytest.fixture(scope="session")
def ml_config():
    from polyrec.cli import DEFAULT_CONFIG
    return Config.from_yaml(DEFAULT_CONFIG, ["train.progress=false"])
