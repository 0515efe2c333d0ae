"""Behaviour histories: what each row's user did strictly before the row's time.

Interactions are kept as event logs sorted by (user, time): one of the train period (what
training rows see) and one of the train and valid periods (what valid and test rows and
recommendations see, as a model deployed after the valid period knows them). A row's history
is a span [start, end) of a log found by binary search, so a batch's histories are one gather.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from polyrec.config import TaskSpec


@dataclass(frozen=True)
class EventLog:
    """Interactions sorted by (user, time); ties keep the order they were given in."""

    user: np.ndarray      # [E] int64
    item: np.ndarray      # [E] int64
    time: np.ndarray      # [E] float64
    feedback: np.ndarray  # [E, F] float32: what the user did (see feedback_features)

    @classmethod
    def of(cls, user: np.ndarray, item: np.ndarray, time: np.ndarray, feedback: np.ndarray) -> EventLog:
        order = np.lexsort((time, user))
        return cls(user[order].astype(np.int64), item[order].astype(np.int64), time[order].astype(np.float64),
                   feedback[order].astype(np.float32))

    def __len__(self) -> int:
        return len(self.user)

    def spans(self, user: np.ndarray, time: np.ndarray | None = None) -> np.ndarray:
        """[N, 2] (start, end) of each ``user``'s events strictly before ``time`` (all of them
        where ``time`` is None): an event at the row's own time is never in its history."""
        return _spans(self.user, self.time, np.asarray(user, np.int64), time)


def _spans(group: np.ndarray, time: np.ndarray, query: np.ndarray, query_time: np.ndarray | None) -> np.ndarray:
    """For events sorted by (group, time): [N, 2] (start, end) of each query group's events strictly
    before its query time (all of them where ``query_time`` is None)."""
    start = np.searchsorted(group, query, "left")
    if query_time is None:
        return np.stack([start, np.searchsorted(group, query, "right")], 1)
    # (group, time) pairs as one sortable integer: group-major, time by its rank among all times
    ranks = np.unique(np.concatenate([time, np.asarray(query_time, np.float64)]), return_inverse=True)[1]
    width = ranks.max(initial=0) + 1
    keys = group * width + ranks[:len(time)]
    return np.stack([start, np.searchsorted(keys, query * width + ranks[len(time):], "left")], 1)


def statistics(log: EventLog, user: np.ndarray, item: np.ndarray, time: np.ndarray | None, window: float,
               shrinkage: float) -> np.ndarray:
    """[N, 2 + 1 + K] leak-free statistics of each row, from the log's events strictly before the
    row's time (all of them where ``time`` is None): log(1 + the user's events), log(1 + the
    item's events) and log(1 + the item's events in the last ``window`` time units), then per
    feedback value (see :func:`feedback_features`) the item's mean, shrunk toward the log's mean
    by ``shrinkage`` pseudo-events (a new item reads the mean)."""
    user, item = np.asarray(user, np.int64), np.asarray(item, np.int64)
    order = np.lexsort((log.time, log.item))
    by_item, item_time, values = log.item[order], log.time[order], log.feedback[order, 0::2].astype(np.float64)
    labelled = log.feedback[order, 1::2].astype(np.float64)
    users = _spans(log.user, log.time, user, time)
    items = _spans(by_item, item_time, item, time)
    last = np.full(len(item), log.time.max(initial=0)) if time is None else np.asarray(time, np.float64)
    recent = items[:, 1] - _spans(by_item, item_time, item, last - window)[:, 1].clip(min=items[:, 0])
    prefix = lambda x: np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, 0)])  # noqa: E731
    sums, counts = prefix(values * labelled), prefix(labelled)
    total, n = sums[-1], counts[-1]
    prior = np.divide(total, n, out=np.zeros_like(total), where=n > 0)
    item_sum = sums[items[:, 1]] - sums[items[:, 0]]
    item_n = counts[items[:, 1]] - counts[items[:, 0]]
    weight = item_n + shrinkage
    means = np.divide(item_sum + shrinkage * prior, weight, out=np.broadcast_to(prior, item_sum.shape).copy(),
                      where=weight > 0)
    out = [np.log1p(users[:, 1] - users[:, 0]), np.log1p(items[:, 1] - items[:, 0]), np.log1p(recent)]
    return np.column_stack(out + [means]).astype(np.float32)


def feedback_features(labels: np.ndarray, tasks: list[TaskSpec], train_labels: np.ndarray) -> np.ndarray:
    """[E, 2T] per event and task: the label (regression standardized by its train mean and std;
    0 where missing) and whether the event has one, so "watched, disliked" differs from "loved"."""
    out = []
    for t, task in enumerate(tasks):
        y = labels[:, t].astype(np.float64)
        if task.kind == "regression":
            ref = train_labels[:, t][~np.isnan(train_labels[:, t])]
            mean, std = (ref.mean(), ref.std()) if len(ref) else (0.0, 1.0)
            y = (y - mean) / (std if std > 0 else 1.0)
        out += [np.nan_to_num(y), ~np.isnan(y)]
    return np.stack(out, 1).astype(np.float32)


@dataclass(frozen=True)
class PastEvents:
    """An event log as rows read it at their own moment: ``start`` is the log's first event in the
    model's event table (:class:`polyrec.models.history.EventTable`), where spans point."""

    log: EventLog
    start: int = 0

    def context(self, config, user: np.ndarray, item: np.ndarray, time: np.ndarray | None) -> dict[str, torch.Tensor]:
        """What rows (``user``, ``item``) at ``time`` (None: after every event) read besides the pair,
        as :meth:`polyrec.data.rows.Samples.context` holds it: their history spans (when the config
        reads histories) and statistics (with a stats section), from this log's earlier events."""
        out = {}
        if config.reads_history:
            out["history"] = torch.from_numpy(self.log.spans(user, time) + self.start)
        if config.stats is not None:
            out["stats"] = torch.from_numpy(statistics(self.log, user, item, time, config.stats.window,
                                                       config.stats.shrinkage))
        return out


@dataclass(frozen=True)
class Histories:
    """The two event logs a dataset's rows read, stacked into one: ``train`` first, then ``known``."""

    train: EventLog
    known: EventLog

    @property
    def train_events(self) -> PastEvents:
        """What training rows read: the train period."""
        return PastEvents(self.train, 0)

    @property
    def known_events(self) -> PastEvents:
        """What valid and test rows, given rows and recommendations read: the train and valid periods."""
        return PastEvents(self.known, len(self.train))

    def train_spans(self, user: np.ndarray, time: np.ndarray | None = None) -> np.ndarray:
        return self.train.spans(user, time)

    def known_spans(self, user: np.ndarray, time: np.ndarray | None = None) -> np.ndarray:
        return self.known.spans(user, time) + len(self.train)

    @property
    def item(self) -> np.ndarray:
        return np.concatenate([self.train.item, self.known.item])

    @property
    def feedback(self) -> np.ndarray:
        return np.concatenate([self.train.feedback, self.known.feedback])
