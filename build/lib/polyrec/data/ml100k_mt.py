"""Built-in protocol ``ml100k-mt``: the exact rows the reference libraries were measured on.

torch-rechub 0.9.0, DeepCTR-Torch 0.3.0 and RecBole 1.2.1 were trained and evaluated on these
train/valid/test rows, pre-drawn negatives included; a model trained here is compared with
them row for row. The rows are rebuilt from the MovieLens-100K files inside the PyPI wheel
``recbole==1.2.1`` and their content hashes are checked against the reference runs'.

Rules:
- per user, rows sorted by (timestamp, item id); n_valid = n_test = max(1, floor(0.1·n + 0.5)),
  the first n − n_valid − n_test rows are train, then valid, then test;
- 4 negatives per positive, drawn i.i.d. uniformly with replacement from the movies the user
  never rated anywhere, from one ``numpy.random.default_rng(2024)`` stream consumed split by
  split (train, valid, test), user by user (ascending), one ``integers(0, n_candidates,
  4·n_positives)`` call each; a negative takes its positive's timestamp;
- watch = 1 on rated rows, 0 on negatives; like = rating ≥ 4 (0 on negatives); rating NaN on negatives.

``load_ml100k_mt`` returns the rows as one interactions table with a ``split`` column
(``data.split: {method: column}``), the users (age, age_bucket, gender, occupation) and the
items (title, release_year, first_genre, genres as a list).
"""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from polyrec.data.movielens import recbole_copy
from polyrec.data.tables import Tables
from polyrec.errors import DataError

SEED, NEGATIVES = 2024, 4
SPLITS = ("train", "valid", "test")
HASH_COLUMNS = ["user_id", "item_id", "watch", "like", "rating", "timestamp"]
REFERENCE_SHA256 = {   # content_sha256 of the reference runs' rows
    "train": "95d4c02663409bb0d8c2d8a7d7d227cd3c264431e358b497209dbee931ee4fc9",
    "valid": "8f8f1d3ef85a5c7aca6ae0d57e8c2532c2062641e96149daaa40aa57974dfa65",
    "test": "2dcaafea3f885e187c455748acb8cb58bd17cad5d389b5fc744ab1eb32073eed",
}


def content_sha256(rows: pd.DataFrame) -> str:
    """The rows' fingerprint: sha256 of their CSV text over HASH_COLUMNS (6 significant digits)."""
    text = rows[HASH_COLUMNS].to_csv(index=False, float_format="%.6g", na_rep="nan")
    return hashlib.sha256(text.encode()).hexdigest()


def _read(folder: Path, part: str) -> pd.DataFrame:
    raw = (folder / f"ml-100k.{part}").read_bytes().decode("utf-8", errors="replace")
    from io import StringIO
    frame = pd.read_csv(StringIO(raw), sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
    return frame.rename(columns=lambda c: c.split(":")[0])


def build_rows(folder: Path) -> dict[str, pd.DataFrame]:
    """The protocol's train, valid and test rows from the recbole files in ``folder``."""
    raw = _read(folder, "inter")
    rated = pd.DataFrame({"user_id": raw["user_id"].astype(np.int64), "item_id": raw["item_id"].astype(np.int64),
                          "rating": raw["rating"].astype(float),
                          "timestamp": raw["timestamp"].astype(float).astype(np.int64)})
    rated = rated.sort_values(["user_id", "timestamp", "item_id"], kind="mergesort").reset_index(drop=True)
    by_user = rated.groupby("user_id")
    position, count = by_user.cumcount().to_numpy(), by_user["item_id"].transform("size").to_numpy()
    held = np.maximum(1, np.floor(0.1 * count + 0.5).astype(np.int64))
    first_valid = count - 2 * held
    rated["split"] = np.select([position < first_valid, position < first_valid + held], ["train", "valid"], "test")

    catalog = np.sort(_read(folder, "item")["item_id"].astype(np.int64).to_numpy())
    seen = {user: np.sort(items.to_numpy()) for user, items in by_user["item_id"]}
    rng = np.random.default_rng(SEED)
    rows = {}
    for split in SPLITS:   # the order of draws is part of the protocol
        positives = rated[rated["split"] == split]
        negatives = []
        for user, group in positives.groupby("user_id", sort=True):
            candidates = np.setdiff1d(catalog, seen[user], assume_unique=True)
            drawn = candidates[rng.integers(0, len(candidates), size=NEGATIVES * len(group))]
            negatives.append(pd.DataFrame({"user_id": user, "item_id": drawn, "rating": np.nan,
                                           "timestamp": np.repeat(group["timestamp"].to_numpy(), NEGATIVES)}))
        frame = pd.concat([positives.assign(watch=1, like=(positives["rating"] >= 4).astype(np.int64)),
                           pd.concat(negatives).assign(watch=0, like=0)], ignore_index=True)
        frame = frame.sort_values(["user_id", "timestamp", "watch", "item_id"], ascending=[True, True, False, True],
                                  kind="mergesort").reset_index(drop=True)
        rows[split] = frame.astype({"watch": np.int8, "like": np.int8, "rating": np.float32})[HASH_COLUMNS]
    return rows


def load_ml100k_mt(cache_dir: str | Path | None = None) -> Tables:
    folder = recbole_copy(cache_dir)
    rows = build_rows(folder)
    for split, frame in rows.items():
        if content_sha256(frame) != REFERENCE_SHA256[split]:
            raise DataError(f"protocol ml100k-mt: the {split} rows built from {folder} differ from the reference "
                            "runs' rows (content hash mismatch); delete that folder to fetch the data again")
    users = _read(folder, "user")
    users = pd.DataFrame({"user_id": users["user_id"].astype(np.int64), "age": users["age"].astype(np.int64),
                          "gender": users["gender"], "occupation": users["occupation"]})
    users["age_bucket"] = users["age"] // 10 * 10
    items = _read(folder, "item")
    genres = items["class"].str.split(" ")
    items = pd.DataFrame({"item_id": items["item_id"].astype(np.int64), "title": items["movie_title"],
                          "release_year": items["release_year"].astype(str), "first_genre": genres.str[0],
                          "genres": genres})
    interactions = pd.concat([frame.assign(split=split) for split, frame in rows.items()], ignore_index=True)
    return Tables(interactions, users.sort_values("user_id", ignore_index=True),
                  items.sort_values("item_id", ignore_index=True))


def rows_sha256(tables: Tables) -> dict[str, str]:
    """content_sha256 of each split of ``load_ml100k_mt``'s interactions."""
    inter = tables.interactions
    return {split: content_sha256(inter[inter["split"] == split].reset_index(drop=True)) for split in SPLITS}
