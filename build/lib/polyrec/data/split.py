"""Train/valid/test splits over interaction rows: per-user temporal, random, leave-last-out."""
from __future__ import annotations

import numpy as np

from polyrec.config import SplitSpec

TRAIN, VALID, TEST = 0, 1, 2


def split_rows(user: np.ndarray, item: np.ndarray, time: np.ndarray | None, spec: SplitSpec,
               seed: int) -> np.ndarray:
    """Return a split code (TRAIN/VALID/TEST) for each interaction row.

    Per-user splits order each user's rows by time, ties by item index, and give the
    last ``test`` fraction to test and the ``valid`` fraction before it to valid
    (at least one row each, RecBole's rule); users with fewer than 3 rows stay in train.
    """
    if spec.method == "random":
        rng = np.random.default_rng(seed)
        u = rng.random(len(user))
        return np.where(u < spec.test, TEST, np.where(u < spec.test + spec.valid, VALID, TRAIN)).astype(np.int8)
    order = np.lexsort((item, time, user))
    sorted_user = user[order]
    starts = np.flatnonzero(np.r_[True, sorted_user[1:] != sorted_user[:-1]])
    counts = np.diff(np.r_[starts, len(order)])
    pos = np.arange(len(order)) - np.repeat(starts, counts)
    n = np.repeat(counts, counts)
    if spec.method == "leave_last_out":
        n_test = np.ones_like(n)
        n_valid = np.ones_like(n)
    else:
        n_test = np.maximum(1, np.floor(n * spec.test).astype(np.int64))
        n_valid = np.maximum(1, np.floor(n * spec.valid).astype(np.int64))
    eligible = n >= 3
    code = np.full(len(order), TRAIN, dtype=np.int8)
    code[eligible & (pos >= n - n_test - n_valid)] = VALID
    code[eligible & (pos >= n - n_test)] = TEST
    out = np.empty_like(code)
    out[order] = code
    return out
