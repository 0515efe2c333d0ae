"""Synthetic interaction data with a realistic shape, for scale benchmarks: Zipf item popularity,
users with latent tastes over topics, correlated tasks (click, then like and purchase after a
click, a star rating) and item text built from the item's topic.

Each interaction picks a user (Zipf activity), a topic from the user's taste (Dirichlet), then an
item of that topic by popularity (Zipf); like = Bernoulli(sigmoid(item quality + how much the
user favours the topic)); purchase = a like that also clears the price (Bernoulli(sigmoid(quality
- price z-score))); stars = 1–5 around quality and favour. Items carry their topic as
``category`` (10 % noise), a ``brand``, a ``price`` and a ``title`` of words drawn from their
topic's vocabulary; users an ``age``. Timestamps are random, so each user's temporal split is random.

:func:`synthetic_tables` gives tables in memory; :func:`write_synthetic_split` writes the same
kind of rows to Parquet a chunk at a time (training rows larger than memory, for streaming).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from polyrec.data.tables import Tables

WORDS_PER_TOPIC, WORDS_PER_TITLE = 12, 4


def _zipf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities ∝ 1 / rank^exponent over ``n`` entries, in random order."""
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.permutation(weights / weights.sum())


class SyntheticWorld:
    """Users, items and topics; :meth:`draw` samples interactions from them."""

    def __init__(self, n_users: int, n_items: int, n_topics: int = 50, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.n_users, self.n_items, self.n_topics = n_users, n_items, n_topics
        # every topic has items (when there are at least as many items as topics)
        self.topic = rng.permutation(np.arange(n_items) % n_topics)
        self.popularity = _zipf(n_items, 1.0, rng)
        self.taste = rng.dirichlet(np.full(n_topics, 0.3), n_users)              # [U, K]
        self.activity = _zipf(n_users, 0.8, rng)
        self.quality = rng.normal(0, 1, n_items)
        self.price = np.round(np.exp(rng.normal(3, 1, n_items)), 2)
        self.members = [np.flatnonzero(self.topic == k) for k in range(n_topics)]
        self.member_cdf = [np.cumsum(self.popularity[m]) / self.popularity[m].sum() for m in self.members]
        noisy = np.where(rng.random(n_items) < 0.1, rng.integers(0, n_topics, n_items), self.topic)
        words = rng.integers(0, n_topics * WORDS_PER_TOPIC, (n_items, 1))   # one word from anywhere
        own = self.topic[:, None] * WORDS_PER_TOPIC + rng.integers(0, WORDS_PER_TOPIC, (n_items, WORDS_PER_TITLE - 1))
        self.items = pd.DataFrame({
            "item": [f"i{i}" for i in range(n_items)], "category": noisy.astype(str),
            "brand": rng.integers(0, 2000, n_items).astype(str), "price": self.price,
            "title": [" ".join(f"w{w}" for w in row) for row in np.hstack([own, words])]})
        self.users = pd.DataFrame({"user": [f"u{u}" for u in range(n_users)], "age": rng.integers(16, 80, n_users)})

    def draw(self, n: int, rng: np.random.Generator, chunk: int = 1_000_000) -> pd.DataFrame:
        """``n`` interactions (user, item, ts, click = 1, like, purchase, stars), drawn ``chunk`` at a time."""
        return pd.concat([self._draw(min(chunk, n - a), rng) for a in range(0, n, chunk)], ignore_index=True)

    def _draw(self, n: int, rng: np.random.Generator) -> pd.DataFrame:
        users = rng.choice(self.n_users, n, p=self.activity)
        cumulative = np.cumsum(self.taste[users], 1)
        topics = np.minimum((cumulative < rng.random((n, 1))).sum(1), self.n_topics - 1)
        items = np.empty(n, np.int64)
        for k in range(self.n_topics):
            rows = np.flatnonzero(topics == k)
            members = self.members[k]
            items[rows] = members[np.minimum(np.searchsorted(self.member_cdf[k], rng.random(len(rows))),
                                             len(members) - 1)]
        favour = self.taste[users, self.topic[items]] * self.n_topics - 1         # > 0: above an even taste
        quality = self.quality[items]
        like = rng.random(n) < 1 / (1 + np.exp(-(quality + favour)))
        price_z = (np.log(self.price[items]) - 3)
        purchase = like & (rng.random(n) < 1 / (1 + np.exp(-(quality - price_z))))
        stars = np.clip(np.round(3 + quality + 0.5 * np.tanh(favour) + rng.normal(0, 0.7, n)), 1, 5)
        return pd.DataFrame({"user": [f"u{u}" for u in users], "item": [f"i{i}" for i in items],
                             "ts": rng.integers(0, 2 ** 31, n), "click": 1.0, "like": like.astype(float),
                             "purchase": purchase.astype(float), "stars": stars})


def synthetic_tables(n_users: int, n_items: int, n_interactions: int, n_topics: int = 50,
                     seed: int = 0) -> Tables:
    """Tables with ids ``u<k>`` / ``i<k>``; duplicate (user, item) draws are dropped, so slightly
    fewer than ``n_interactions`` rows come back."""
    world = SyntheticWorld(n_users, n_items, n_topics, seed)
    interactions = world.draw(n_interactions, np.random.default_rng(seed + 1))
    interactions = interactions.drop_duplicates(["user", "item"]).reset_index(drop=True)
    return Tables(interactions, world.users, world.items)


def write_synthetic_split(folder: str | Path, n_users: int, n_items: int, n_train: int, n_eval: int,
                          n_topics: int = 50, seed: int = 0, rows_per_file: int = 1_000_000) -> dict[str, Path]:
    """``n_train`` training interactions as a folder of Parquet files (``rows_per_file`` each, written
    one at a time), ``n_eval`` valid and test interactions each, and the users and items tables.
    Returns the paths by ``data`` key (train, valid, test, users, items). ``folder`` must be new or
    empty: nothing already there is overwritten."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty; write the synthetic split into a new folder")
    world, rng = SyntheticWorld(n_users, n_items, n_topics, seed), np.random.default_rng(seed + 1)
    (folder / "train").mkdir(parents=True)
    for k, a in enumerate(range(0, n_train, rows_per_file)):
        rows = world.draw(min(rows_per_file, n_train - a), rng)
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), folder / "train" / f"part-{k:05d}.parquet",
                       row_group_size=131_072)
    paths = {"train": folder / "train"}
    for name in ("valid", "test"):
        paths[name] = folder / f"{name}.parquet"
        world.draw(n_eval, rng).to_parquet(paths[name], index=False)
    for name, table in (("users", world.users), ("items", world.items)):
        paths[name] = folder / f"{name}.parquet"
        table.to_parquet(paths[name], index=False)
    return paths


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
"""A config for :func:`synthetic_tables` (IDs and fields, no text): click and like."""
