"""Training rows streamed from Parquet (``data.streaming``): a file or a folder of files larger than
memory, read in record batches in every epoch, shuffled in a bounded buffer, with negatives drawn
as the rows arrive. Valid and test rows stay in memory.

:func:`scan` reads the file once before training: it checks every row as the in-memory path does
(the same messages, naming the file and its row numbers) and collects the users and items the
vocabularies are fitted on. Memory then holds the tables, the vocabularies and one shuffle buffer,
whatever the file's size.

Where streaming must differ from rows in memory: a sampled negative avoids the user's
interactions among the rows read with it, not all of the user's training interactions (those are
not in memory; like the in-memory rows', it never avoids the later valid and test interactions,
which training does not know); the shuffle is a random order of row groups and
a shuffled buffer, not a permutation of the whole file. Under torchrun each process reads its own
row groups (so the file needs at least as many row groups as processes).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from polyrec import distributed
from polyrec.config import Config
from polyrec.data.rows import Catalog, Samples, interaction_rows
from polyrec.data.negatives import sample_negatives
from polyrec.data.tables import Tables, _examples, item_column, validate_labels
from polyrec.errors import ConfigError, DataError

READ_ROWS = 65_536   # rows per record batch read from the file


@dataclass
class RowGroup:
    piece: object      # a pyarrow ParquetFileFragment of one row group
    path: str
    first_row: int     # its first row's number in its file (for messages)


def row_groups(path: str) -> list[RowGroup]:
    """Every row group of the Parquet file or folder ``path``, files in name order."""
    import pyarrow.dataset as ds
    try:
        fragments = sorted(ds.dataset(path, format="parquet").get_fragments(), key=lambda f: f.path)
        out = []
        for fragment in fragments:
            first = 0
            for piece in fragment.split_by_row_group():
                out.append(RowGroup(piece, fragment.path, first))
                first += piece.row_groups[0].num_rows
        return out
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"train rows {path} cannot be read as Parquet ({str(err)[:200]}); it may be truncated or "
                        "corrupt: write it again") from None


class RowReader:
    """Checked rows of the training file: (user ids, item ids as Arrow text, labels [N, T]) per record batch."""

    def __init__(self, config: Config):
        self.config, spec = config, config.data
        self.user_col, self.item_col = spec.user_col, item_column(spec)
        self.label_cols = list(dict.fromkeys(t.col for t in config.tasks))
        self.columns = list(dict.fromkeys([self.user_col, self.item_col, *self.label_cols]))

    def read(self, group: RowGroup) -> Iterator[tuple[pa.Array, pa.Array, np.ndarray]]:
        where = f"train rows {group.path}"
        missing = [c for c in self.columns if c not in group.piece.physical_schema.names]
        if missing:
            raise DataError(f"{where}: missing column(s) {missing}; it has {group.piece.physical_schema.names}")
        first = group.first_row
        try:
            for batch in group.piece.to_batches(columns=self.columns, batch_size=READ_ROWS):
                users = _ids(batch.column(self.user_col), where, self.user_col, first)
                items = _ids(batch.column(self.item_col), where, self.item_col, first)
                frame = batch.select(self.label_cols).to_pandas()
                frame.index = pd.RangeIndex(first, first + len(frame))
                frame = validate_labels(frame, self.config, where)
                first += len(frame)
                yield users, items, np.stack([frame[t.col].to_numpy(np.float32) for t in self.config.tasks], 1)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{where} cannot be read past row {first} ({str(err)[:200]}); it may be truncated or "
                            "corrupt: write it again") from None


def _ids(column: pa.Array, where: str, name: str, first: int) -> pa.Array:
    """Ids as text, as :func:`polyrec.data.tables.ids` makes them (1.0 → "1"), in Arrow (no per-row Python)."""
    if column.null_count:
        rows = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)) + first
        raise DataError(f"{where}: column '{name}' has missing ids at rows {_examples(rows)}")
    if pa.types.is_floating(column.type):
        whole = pc.all(pc.equal(pc.floor(column), column)).as_py()
        column = pc.cast(column, pa.int64()) if whole else column
    elif not (pa.types.is_integer(column.type) or pa.types.is_string(column.type)
              or pa.types.is_large_string(column.type)):
        raise DataError(f"{where}: column '{name}' holds {column.type} values; ids must be text or numbers")
    return pc.cast(column, pa.string())


@dataclass
class Scan:
    """What one pass over the training rows found."""
    users: set[str]
    items: set[str]
    rows: int
    positives: int
    label_sums: np.ndarray     # [T] over labelled rows
    label_counts: np.ndarray   # [T]


def scan(config: Config) -> Scan:
    """One pass over ``data.train``: every row checked; its users, items and label sums."""
    reader, tasks = RowReader(config), config.tasks
    out = Scan(set(), set(), 0, 0, np.zeros(len(tasks)), np.zeros(len(tasks)))
    for group in row_groups(config.data.train):
        for users, items, labels in reader.read(group):
            out.users.update(pc.unique(users).to_pylist())
            out.items.update(pc.unique(items).to_pylist())
            out.rows += len(labels)
            out.positives += int(interaction_rows(labels, tasks).sum())
            out.label_sums += np.nansum(labels, 0)
            out.label_counts += (~np.isnan(labels)).sum(0)
    if out.rows == 0:
        raise DataError(f"train rows {config.data.train} hold no rows")
    return out


def with_streamed_ids(tables: Tables, found: Scan, config: Config, given: Tables) -> Tables:
    """Validated ``tables`` with the streamed rows' users and items: added to a side table built
    from the in-memory rows' ids, and checked against one the user gave."""
    spec = config.data
    sides = {}
    for side, key, streamed, table in (("users", spec.user_col, found.users, tables.users),
                                       ("items", item_column(spec), found.items, tables.items)):
        unknown = streamed - set(table[key])
        if unknown and getattr(given, side) is not None:
            raise DataError(f"train rows {spec.train} reference {len(unknown)} id(s) missing from the {side} table's "
                            f"'{key}' column: {_examples(sorted(unknown))}; add them to the {side} table")
        sides[side] = pd.concat([table, pd.DataFrame({key: sorted(unknown)})], ignore_index=True)
    return Tables(tables.interactions, sides["users"], sides["items"])


def _index(values: pa.Array, catalog: pa.Array) -> np.ndarray:
    """Catalog positions of ``values`` (-1 where absent)."""
    return pc.fill_null(pc.index_in(values, value_set=catalog), -1).to_numpy().astype(np.int64)


class TrainStream:
    """The training rows of a Parquet file or folder as shuffled batches, read anew in each epoch;
    used by the trainer where in-memory :class:`~polyrec.data.rows.Samples` would be."""

    per_process = True   # under torchrun each process reads its own row groups: its batches are its own

    def __init__(self, config: Config, found: Scan, catalog: Catalog):
        spec = config.data
        self.reader, self.tasks, self.shuffle_buffer = RowReader(config), config.tasks, spec.shuffle_buffer
        self.groups = row_groups(spec.train)
        self.user_ids, self.item_ids = pa.array(catalog.user_ids, pa.string()), pa.array(catalog.item_ids, pa.string())
        self.n_items, self.per_positive = len(catalog.item_ids), spec.negatives.per_positive
        self.negative_labels = np.array([spec.negatives.labels.get(t.col, np.nan) for t in self.tasks], np.float32)
        self.rows = found.rows + self.per_positive * found.positives
        extra = self.per_positive * found.positives * np.nan_to_num(self.negative_labels)
        counted = found.label_counts + self.per_positive * found.positives * ~np.isnan(self.negative_labels)
        self.means = (found.label_sums + extra) / np.maximum(counted, 1)
        self.users = np.sort(_index(pa.array(list(found.users), pa.string()), self.user_ids))
        # sampled negatives may be any catalog item, so every item is a training item
        self.items = np.arange(self.n_items) if self.per_positive else np.sort(
            _index(pa.array(list(found.items), pa.string()), self.item_ids))

    def __len__(self) -> int:
        return self.rows

    def entities(self) -> tuple[np.ndarray, np.ndarray]:
        """Catalog indices of the users and items training rows show (what vocabularies are fitted on)."""
        return self.users, self.items

    def label_means(self) -> np.ndarray:
        return self.means

    def n_batches(self, batch_size: int) -> int:
        return -(-self.rows // batch_size)

    def batches(self, batch_size: int, generator: torch.Generator, start: int = 0) -> Iterator[
            tuple[Samples, torch.Tensor]]:
        """One epoch of (batch, its rows) from batch ``start`` on: row groups in an order drawn from
        ``generator``, this process's share of them, rows shuffled ``data.shuffle_buffer`` at a time
        (file order when 0). The same generator state gives the same batches."""
        world = distributed.world_size()
        if len(self.groups) < world:
            raise ConfigError(f"data.train has {len(self.groups)} Parquet row group(s), fewer than the {world} "
                              "training processes: write it with smaller row groups (pyarrow row_group_size)")
        rng = np.random.default_rng(int(torch.randint(2 ** 62, (1,), generator=generator)))
        for batch in itertools.islice(self._epoch(batch_size // world, rng), start, None):
            yield batch, torch.arange(len(batch))

    def _epoch(self, size: int, rng: np.random.Generator) -> Iterator[Samples]:
        """This process's batches of ``size`` rows for one epoch, all drawn from ``rng``."""
        order = rng.permutation(len(self.groups)) if self.shuffle_buffer else np.arange(len(self.groups))
        held: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for g in order[distributed.rank()::distributed.world_size()]:
            for users, items, labels in self.reader.read(self.groups[g]):
                held.append(self._with_negatives(users, items, labels, self.groups[g], rng))
                if sum(len(h[0]) for h in held) >= max(self.shuffle_buffer, size):
                    yield from self._drain(held, size, rng, final=False)
        yield from self._drain(held, size, rng, final=True)

    def _with_negatives(self, users: pa.Array, items: pa.Array, labels: np.ndarray, group: RowGroup,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        user, item = _index(users, self.user_ids), _index(items, self.item_ids)
        if (user < 0).any() or (item < 0).any():   # the file changed since it was scanned
            unknown = users.filter(pa.array(user < 0)).to_pylist() + items.filter(pa.array(item < 0)).to_pylist()
            raise DataError(f"train rows {group.path}: ids not seen when the file was first read "
                            f"({_examples(unknown)}); the file changed during training: train again")
        if not self.per_positive:
            return user, item, labels
        positive = interaction_rows(labels, self.tasks)
        avoid = np.unique(user[positive] * self.n_items + item[positive])
        negatives = sample_negatives(user[positive], self.per_positive, avoid, self.n_items, rng)
        return (np.concatenate([user, np.repeat(user[positive], self.per_positive)]),
                np.concatenate([item, negatives]),
                np.concatenate([labels, np.tile(self.negative_labels, (len(negatives), 1))]))

    def _drain(self, held: list, size: int, rng: np.random.Generator, final: bool) -> Iterator[Samples]:
        """Batches of ``size`` rows out of the buffer ``held`` (shuffled), leaving the remainder
        there; with ``final`` the remainder too, unless a single row (BatchNorm cannot train on one)."""
        if not held:
            return
        user, item, labels = (np.concatenate(part) for part in zip(*held))
        if self.shuffle_buffer:
            keep = rng.permutation(len(user))
            user, item, labels = user[keep], item[keep], labels[keep]
        full = len(user) // size * size
        end = len(user) if final and len(user) - full >= 2 else full
        held[:] = [] if final else [(user[full:], item[full:], labels[full:])]
        for a in range(0, end, size):
            yield Samples(torch.from_numpy(user[a:a + size]), torch.from_numpy(item[a:a + size]),
                          torch.from_numpy(labels[a:a + size]))
