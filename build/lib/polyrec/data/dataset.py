"""From validated tables to tensors: catalog, splits, negatives, encoded features.

Everything is built once as whole tensors; a training batch is then two index
gathers (user rows, item rows) inside the model, with no per-row Python work.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from polyrec.config import Config, FeatureSpec
from polyrec.data.features import EncodedSide, FeatureEncoder
from polyrec.data.history import EventLog, Histories, feedback_features
from polyrec.data.negatives import sample_negatives
from polyrec.data.rows import Catalog, EvalData, Samples, interaction_rows
from polyrec.data.sources import read_table
from polyrec.data.split import TEST, TRAIN, VALID, split_rows
from polyrec.data.tables import Tables, item_column, validate
from polyrec.errors import DataError
from polyrec.text.inputs import TextInputs

SPLITS = {"train": TRAIN, "valid": VALID, "test": TEST}


@dataclass(frozen=True)
class PreparedData:
    """A dataset split, sampled and encoded, ready to train on. Methods return new objects."""

    catalog: Catalog
    user_table: pd.DataFrame              # user and item rows in catalog order
    item_table: pd.DataFrame
    train: Samples
    valid: EvalData
    test: EvalData
    user_history: dict[int, np.ndarray]   # train+valid interactions per user: excluded when recommending
    train_history: dict[int, np.ndarray]  # train-period interactions per user, oldest first
    cold_items: np.ndarray                # catalog indices held out of train and valid (data.cold_items)
    encoder: FeatureEncoder | None = None  # fitted by with_features
    users: EncodedSide | None = None
    items: EncodedSide | None = None
    text: TextInputs | None = None        # language-model inputs (with_text), when config.text is set
    histories: Histories | None = None    # event logs of the rows' histories and statistics (config.reads_events)

    def interaction_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Training-period interactions per catalog user and per catalog item."""
        users = np.zeros(len(self.catalog.user_ids), np.int64)
        users[list(self.train_history)] = [len(v) for v in self.train_history.values()]
        items = np.concatenate([np.zeros(0, np.int64), *self.train_history.values()]).astype(np.int64)
        return users, np.bincount(items, minlength=len(self.catalog.item_ids))

    def with_features(self, features: list[FeatureSpec]) -> PreparedData:
        """Feature vocabularies fitted on the users and items of the training rows (an ID no
        training row shows maps to OOV), and both tables encoded with them."""
        users, items = self.train.entities()
        encoder = FeatureEncoder(features).fit(self.user_table.iloc[users], self.item_table.iloc[items])
        data = replace(self, encoder=encoder, users=encoder.transform(self.user_table, "user"),
                       items=encoder.transform(self.item_table, "item"))
        return data.with_text(self.text) if self.text is not None else data

    def with_text(self, text: TextInputs) -> PreparedData:
        """The language model's inputs joined to the encoded tables."""
        return replace(self, text=text, users=replace(self.users, text=text.user),
                       items=replace(self.items, text=text.item))

    def with_train(self, train: Samples) -> PreparedData:
        """Other training rows (e.g. with teacher-labelled pairs), vocabularies refitted on them."""
        return replace(self, train=train).with_features(self.encoder.specs)


def _id_order(ids: pd.Series) -> np.ndarray:
    """Catalog order: numeric ids by value (so item 2 precedes item 10), otherwise lexicographic."""
    numeric = pd.to_numeric(ids, errors="coerce")
    return np.argsort(numeric.to_numpy(), kind="stable") if numeric.notna().all() else np.argsort(
        ids.to_numpy(), kind="stable")


def prepare(tables: Tables, config: Config) -> PreparedData:
    """Validate, split (derived and seeded by ``data.seed``, or given with the rows), sample
    negatives and encode features; no language-model work (see :func:`polyrec.text.inputs.encode_text`).
    ``tables`` is not changed.

    An *interaction* (what a user did: ranking ground truth, history, excluded when recommending)
    is every row of a derived split; of given rows, those where the first binary task without a
    parent is 1 (the others, e.g. pre-drawn negatives, are scored but never excluded).
    """
    spec, tasks = config.data, config.tasks
    found = None
    if spec.streaming:
        from polyrec.data import stream   # it builds on this module's rows
        found, given = stream.scan(config), tables
        tables = stream.with_streamed_ids(validate(tables, config), found, config, given)
    else:
        tables = validate(tables, config)
    item_col = item_column(spec)
    users = tables.users.iloc[_id_order(tables.users[spec.user_col])].reset_index(drop=True)
    items = tables.items.iloc[_id_order(tables.items[item_col])].reset_index(drop=True)
    titles = items[spec.title_col].fillna("").astype(str) if spec.title_col else items[item_col]
    catalog = Catalog(users[spec.user_col].tolist(), items[item_col].tolist(), titles.tolist())

    inter = tables.interactions
    user = inter[spec.user_col].map(catalog.user_index).to_numpy(np.int64)
    item = inter[item_col].map(catalog.item_index).to_numpy(np.int64)
    time = inter[spec.time_col].to_numpy(np.float64) if spec.time_col in inter else None
    labels = np.stack([inter[t.col].to_numpy(np.float32) for t in tasks], 1)
    if spec.split.given:
        split = inter[spec.split.column].map(SPLITS).to_numpy(np.int8)
        positive = interaction_rows(labels, tasks)
    else:
        split = split_rows(user, item, time, spec.split, spec.seed)
        positive = np.ones(len(inter), bool)
    keys = user * len(catalog.item_ids) + item
    # what is known by the end of each split (its negatives avoid that and no more: a user's later
    # items are as unseen at training time as any other item, and avoiding them would favour them)
    known_by = {code: np.unique(keys[positive & (split <= code)]) for code in SPLITS.values()}
    cold_items = cold_item_indices(spec, catalog)
    catalog.cold_item_ids = [catalog.item_ids[i] for i in cold_items]
    held_out = np.isin(item, cold_items) & (split != TEST)
    user, item, time, labels, split, positive = (a[~held_out] if a is not None else None
                                                 for a in (user, item, time, labels, split, positive))
    for name, code in SPLITS.items():
        if not (split == code).any() and not (code == TRAIN and found is not None):
            raise DataError(f"the {name} split is empty: {len(inter)} interactions of {len(catalog.user_ids)} users "
                            f"under split '{spec.split.method}'; add data or change data.split")

    # train and valid negatives never show a cold item either
    cold_pairs = (np.arange(len(catalog.user_ids))[:, None] * len(catalog.item_ids) + cold_items).ravel()
    excluded = {TRAIN: np.union1d(known_by[TRAIN], cold_pairs), VALID: np.union1d(known_by[VALID], cold_pairs),
                TEST: known_by[TEST]}
    rng = np.random.default_rng(spec.seed)
    neg_labels = np.full(len(tasks), np.nan, np.float32)
    for t, task in enumerate(tasks):
        neg_labels[t] = spec.negatives.labels.get(task.col, np.nan)

    histories = None
    if config.reads_events:
        train_labels = labels[(split == TRAIN) & positive]

        def log(rows):
            return EventLog.of(user[rows], item[rows], time[rows], feedback_features(labels[rows], tasks, train_labels))
        histories = Histories(log((split == TRAIN) & positive), log((split <= VALID) & positive))

    def samples_of(code: int) -> Samples:
        rows = split == code
        u, i, y = user[rows], item[rows], labels[rows]
        t = time[rows] if time is not None else None
        k = spec.negatives.per_positive
        if k:
            pos_u = user[rows & positive]
            neg_i = sample_negatives(pos_u, k, excluded[code], len(catalog.item_ids), rng)
            u = np.concatenate([u, np.repeat(pos_u, k)])
            i = np.concatenate([i, neg_i])
            y = np.concatenate([y, np.tile(neg_labels, (len(neg_i), 1))])
            if t is not None:   # a sampled negative shares its positive's moment, and so its history
                t = np.concatenate([t, np.repeat(time[rows & positive], k)])
        context = {}
        if histories is not None:
            context = (histories.train_events if code == TRAIN else histories.known_events).context(config, u, i, t)
        return Samples(torch.from_numpy(u), torch.from_numpy(i), torch.from_numpy(y), **context)

    train = samples_of(TRAIN) if found is None else stream.TrainStream(config, found, catalog)

    def eval_of(code: int) -> EvalData:
        rows, earlier = (split == code) & positive, (split < code) & positive
        return EvalData(samples_of(code), Samples(torch.from_numpy(user[rows]), torch.from_numpy(item[rows]),
                                                  torch.from_numpy(labels[rows])),
                        torch.from_numpy(user[earlier]), torch.from_numpy(item[earlier]))

    valid, test = eval_of(VALID), eval_of(TEST)
    data = PreparedData(catalog, users, items, train, valid, test,
                        _items_by_user(user, item, time, (split <= VALID) & positive),
                        _items_by_user(user, item, time, (split == TRAIN) & positive), cold_items,
                        histories=histories)
    return data.with_features(config.features)


def cold_item_indices(spec, catalog: Catalog) -> np.ndarray:
    """Catalog indices of ``data.cold_items``: a seeded share of the catalog, named ids, or a file of ids."""
    value = spec.cold_items
    if isinstance(value, float):
        return np.sort(np.random.default_rng(spec.seed).choice(
            len(catalog.item_ids), int(round(value * len(catalog.item_ids))), replace=False))
    if isinstance(value, str):
        path = Path(value)
        if path.suffix.lower() in (".csv", ".tsv", ".parquet"):
            frame = read_table(path, "data.cold_items")
            column = item_column(spec) if item_column(spec) in frame else frame.columns[0]
            value = frame[column].dropna().astype(str).tolist()
        elif path.is_file():
            value = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        else:
            raise DataError(f"data.cold_items: {path} is neither a share of the catalog (a number), a list of ids, "
                            "nor an existing file of ids")
    unknown = [i for i in value if i not in catalog.item_index]
    if unknown:
        raise DataError(f"data.cold_items names {len(unknown)} item id(s) that are not in the catalog: "
                        f"{unknown[:5]}")
    return np.unique([catalog.item_index[i] for i in value]).astype(np.int64)


def _items_by_user(user: np.ndarray, item: np.ndarray, time: np.ndarray | None,
                   rows: np.ndarray) -> dict[int, np.ndarray]:
    """Item indices of the selected rows per user, oldest first."""
    u, i = user[rows], item[rows]
    order = np.lexsort((time[rows], u)) if time is not None else np.argsort(u, kind="stable")
    u, i = u[order], i[order]
    bounds = np.flatnonzero(np.r_[True, u[1:] != u[:-1], True])
    return {int(u[a]): i[a:b] for a, b in zip(bounds[:-1], bounds[1:])} if len(u) else {}
