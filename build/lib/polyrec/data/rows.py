"""The row types every stage shares: labelled (user, item) rows by catalog index, a split as the
evaluator reads it, and the catalog that maps ids to indices. Below both the in-memory
(:mod:`polyrec.data.dataset`) and streamed (:mod:`polyrec.data.stream`) row sources."""
from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from polyrec import distributed


def _column(frame: pd.DataFrame, name: str) -> torch.Tensor:
    return torch.tensor(frame[name].to_numpy(np.int64))


@dataclass
class Samples:
    """Labelled (user, item) rows by catalog index; ``labels[:, t]`` is NaN where task t has no label.
    Each row's moment, where the config reads one (see :mod:`polyrec.data.history`): ``history``,
    its span of the model's event log, and ``stats``, its statistics."""

    user: torch.Tensor    # [N] int64
    item: torch.Tensor    # [N] int64
    labels: torch.Tensor  # [N, T] float32
    history: torch.Tensor | None = None  # [N, 2] int64 (start, end)
    stats: torch.Tensor | None = None    # [N, S] float32
    per_process: ClassVar[bool] = False  # under torchrun every process sees every batch and takes its share

    def __len__(self) -> int:
        return len(self.user)

    def entities(self) -> tuple[np.ndarray, np.ndarray]:
        """Catalog indices of the users and items these rows show."""
        return np.unique(self.user.numpy()), np.unique(self.item.numpy())

    def label_means(self) -> np.ndarray:
        """[T] each task's mean label over the rows that have one."""
        return torch.nanmean(self.labels, 0).numpy()

    def n_batches(self, batch_size: int) -> int:
        # BatchNorm cannot train on a single row: a trailing batch that would give a process one row is dropped
        return len(self) // batch_size + int(len(self) % batch_size >= 2 * distributed.world_size())

    def batches(self, batch_size: int, generator: torch.Generator, start: int = 0) -> Iterator[
            tuple[Samples, torch.Tensor]]:
        """One epoch of (these rows, a batch's indices) in an order drawn from ``generator``, from
        batch ``start`` on (the order is drawn as for a whole pass)."""
        order = torch.randperm(len(self), generator=generator)
        for step in range(start, self.n_batches(batch_size)):
            yield self, order[step * batch_size:(step + 1) * batch_size]

    def context(self, rows: torch.Tensor | slice | None = None) -> dict[str, torch.Tensor]:
        """What the model reads besides (user, item) for ``rows`` (all rows when None): keyword
        arguments of :meth:`~polyrec.models.network.MultiTaskModel.forward`."""
        parts = {"history": self.history, "stats": self.stats}
        return {k: v if rows is None else v[rows] for k, v in parts.items() if v is not None}

    def subset(self, mask: np.ndarray | torch.Tensor) -> Samples:
        mask = torch.as_tensor(mask)
        return Samples(self.user[mask], self.item[mask], self.labels[mask], **self.context(mask))

    def to_frame(self, task_names: list[str]) -> pd.DataFrame:
        frame = pd.DataFrame({"user": self.user.numpy(), "item": self.item.numpy()})
        for t, name in enumerate(task_names):
            frame[f"label:{name}"] = self.labels[:, t].numpy()
        if self.history is not None:
            frame["history_start"], frame["history_end"] = self.history[:, 0].numpy(), self.history[:, 1].numpy()
        for k in range(self.stats.shape[1] if self.stats is not None else 0):
            frame[f"stat:{k}"] = self.stats[:, k].numpy()
        return frame

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, task_names: list[str]) -> Samples:
        labels = np.stack([frame[f"label:{n}"].to_numpy(np.float32) for n in task_names], 1)
        history = torch.from_numpy(frame[["history_start", "history_end"]].to_numpy(np.int64, copy=True)) \
            if "history_start" in frame else None
        stats = [c for c in frame if c.startswith("stat:")]
        stats = torch.from_numpy(frame[stats].to_numpy(np.float32, copy=True)) if stats else None
        return cls(_column(frame, "user"), _column(frame, "item"), torch.from_numpy(labels), history, stats)


@dataclass
class EvalData:
    """What the evaluator needs for one split: scored rows, the split's interactions
    (ranking ground truth) and the pairs to exclude from ranking (earlier interactions)."""

    samples: Samples
    interactions: Samples
    seen_user: torch.Tensor
    seen_item: torch.Tensor

    def restrict_items(self, items: np.ndarray) -> EvalData:
        """This split on the rows of ``items`` only (e.g. cold-start items); ranking still
        scores the whole catalog, against ground truth among ``items``."""
        keep = lambda s: s.subset(torch.from_numpy(np.isin(s.item.numpy(), items)))  # noqa: E731
        return EvalData(keep(self.samples), keep(self.interactions), self.seen_user, self.seen_item)

    def save(self, folder: Path, task_names: list[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.samples.to_frame(task_names).to_parquet(folder / "samples.parquet")
        self.interactions.to_frame(task_names).to_parquet(folder / "interactions.parquet")
        pd.DataFrame({"user": self.seen_user.numpy(), "item": self.seen_item.numpy()}).to_parquet(
            folder / "seen.parquet")

    @classmethod
    def load(cls, folder: Path, task_names: list[str]) -> EvalData:
        seen = pd.read_parquet(folder / "seen.parquet")
        return cls(Samples.from_frame(pd.read_parquet(folder / "samples.parquet"), task_names),
                   Samples.from_frame(pd.read_parquet(folder / "interactions.parquet"), task_names),
                   _column(seen, "user"), _column(seen, "item"))


@dataclass
class Catalog:
    user_ids: list[str]
    item_ids: list[str]
    titles: list[str]
    # items no training row shows: held out (data.cold_items) or added after training (add_items)
    cold_item_ids: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}
        self.item_index = {u: i for i, u in enumerate(self.item_ids)}

    def copy(self) -> Catalog:
        """A catalog to add to while this one is read (its own lists and indexes)."""
        return Catalog(list(self.user_ids), list(self.item_ids), list(self.titles), list(self.cold_item_ids))

    def of_users(self, ids: list[str]) -> Catalog:
        """This catalog's items with ``ids`` as its only users (the item lists and index shared)."""
        view = copy.copy(self)
        view.user_ids, view.user_index = list(ids), {u: k for k, u in enumerate(ids)}
        return view

    def add_users(self, ids: list[str]) -> None:
        self.user_ids = self.user_ids + ids
        self.user_index.update({u: len(self.user_index) + k for k, u in enumerate(ids)})

    def add_items(self, ids: list[str], titles: list[str]) -> None:
        self.item_ids, self.titles = self.item_ids + ids, self.titles + titles
        self.cold_item_ids = self.cold_item_ids + ids
        self.item_index.update({u: len(self.item_index) + k for k, u in enumerate(ids)})

    def to_json(self) -> dict:
        return {"user_ids": self.user_ids, "item_ids": self.item_ids, "titles": self.titles,
                "cold_item_ids": self.cold_item_ids}


def interaction_rows(labels: np.ndarray, tasks) -> np.ndarray:
    """Of given rows [N, T], those that are interactions: the first binary task without a parent is 1
    (every row when there is no such task)."""
    root = next((t for t, task in enumerate(tasks) if task.kind == "binary" and task.depends_on is None), None)
    return labels[:, root] == 1 if root is not None else np.ones(len(labels), bool)


def history_pairs(history: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) of every interaction in a per-user history."""
    users = [np.full(len(items), user, np.int64) for user, items in history.items()]
    items = [np.asarray(items, np.int64) for items in history.values()]
    empty = [np.zeros(0, np.int64)]
    return np.concatenate(users or empty), np.concatenate(items or empty)
