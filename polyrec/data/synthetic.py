"""Synthetic interaction data with a realistic shape, for scale benchmarks: Zipf item popularity,
users with latent tastes over topics, and two correlated tasks (click, then like after a click).

Each interaction picks a user (Zipf activity), a topic from the user's taste (Dirichlet), then an
item of that topic by popularity (Zipf); like = Bernoulli(sigmoid(item quality + how much the
user favours the topic)). Items carry their topic as ``category`` (10 % noise), a ``brand`` and
a ``price``; users an ``age``. Timestamps are random, so each user's temporal split is random.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from polyrec.data.tables import Tables


def _zipf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities ∝ 1 / rank^exponent over ``n`` entries, in random order."""
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.permutation(weights / weights.sum())


def synthetic_tables(n_users: int, n_items: int, n_interactions: int, n_topics: int = 50,
                     seed: int = 0) -> Tables:
    """Tables with ids ``u<k>`` / ``i<k>``; duplicate (user, item) draws are dropped, so slightly
    fewer than ``n_interactions`` rows come back."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, n_topics, n_items)
    popularity = _zipf(n_items, 1.0, rng)
    taste = rng.dirichlet(np.full(n_topics, 0.3), n_users)                       # [U, K]
    users = rng.choice(n_users, n_interactions, p=_zipf(n_users, 0.8, rng))
    cumulative = np.cumsum(taste, 1)
    topics = np.minimum((cumulative[users] < rng.random((n_interactions, 1))).sum(1), n_topics - 1)
    items = np.empty(n_interactions, np.int64)
    for k in range(n_topics):
        rows, members = np.flatnonzero(topics == k), np.flatnonzero(topic == k)
        weights = popularity[members] / popularity[members].sum()
        items[rows] = members[np.minimum(np.searchsorted(np.cumsum(weights), rng.random(len(rows))),
                                         len(members) - 1)]
    quality = rng.normal(0, 1, n_items)
    favour = taste[users, topic[items]] * n_topics - 1                           # > 0: above an even taste
    like = rng.random(n_interactions) < 1 / (1 + np.exp(-(quality[items] + favour)))
    interactions = pd.DataFrame({"user": [f"u{u}" for u in users], "item": [f"i{i}" for i in items],
                                 "ts": rng.permutation(n_interactions), "click": 1.0, "like": like.astype(float)})
    interactions = interactions.drop_duplicates(["user", "item"]).reset_index(drop=True)
    noisy = np.where(rng.random(n_items) < 0.1, rng.integers(0, n_topics, n_items), topic)
    item_table = pd.DataFrame({"item": [f"i{i}" for i in range(n_items)], "category": noisy.astype(str),
                               "brand": rng.integers(0, 2000, n_items).astype(str),
                               "price": np.round(np.exp(rng.normal(3, 1, n_items)), 2)})
    user_table = pd.DataFrame({"user": [f"u{u}" for u in range(n_users)], "age": rng.integers(16, 80, n_users)})
    return Tables(interactions, user_table, item_table)


SYNTHETIC_CONFIG = {
    "data": {"interactions": "synthetic", "user_col": "user", "item_col": "item", "time_col": "ts",
             "negatives": {"per_positive": 4, "labels": {"click": 0}}},
    "features": [{"name": "user", "source": "user"}, {"name": "item", "source": "item"},
                 {"name": "age", "source": "user", "kind": "bucket", "boundaries": [25, 35, 50, 65]},
                 {"name": "category", "source": "item"}, {"name": "brand", "source": "item"},
                 {"name": "price", "source": "item", "kind": "numeric"}],
    "tasks": [{"name": "click", "kind": "binary"}, {"name": "like", "kind": "binary", "depends_on": "click"}],
    "model": {"arch": "mmoe", "embed_dim": 16},
    "train": {"max_epochs": 1, "batch_size": 4096, "progress": False},
    "eval": {"ranking": False},
}
"""A config for :func:`synthetic_tables` (IDs and fields, no text)."""
