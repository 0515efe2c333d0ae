"""Seeded negative sampling: items a user never interacted with, drawn uniformly with replacement."""
from __future__ import annotations

import numpy as np

from polyrec.errors import DataError


def sample_negatives(user: np.ndarray, per_row: int, interacted_keys: np.ndarray, n_items: int,
                     rng: np.random.Generator, max_rounds: int = 100) -> np.ndarray:
    """For each entry of ``user``, ``per_row`` item indices outside the user's interactions.

    ``interacted_keys`` is the sorted array of ``user * n_items + item`` a negative must avoid
    (for a split: what is known by its end). Rejection sampling is fully vectorized: only the
    rejected draws are redrawn.
    """
    users = np.repeat(user, per_row).astype(np.int64)
    items = rng.integers(0, n_items, size=len(users))
    todo = np.arange(len(users))
    for _ in range(max_rounds):
        keys = users[todo] * n_items + items[todo]
        pos = np.searchsorted(interacted_keys, keys)
        pos[pos == len(interacted_keys)] = 0
        clash = interacted_keys[pos] == keys
        todo = todo[clash]
        if len(todo) == 0:
            return items
        items[todo] = rng.integers(0, n_items, size=len(todo))
    raise DataError(f"negative sampling: {len(np.unique(users[todo]))} user(s) interacted with (almost) every item; "
                    "lower data.negatives.per_positive or remove those users")
