"""Behaviour histories: what each row's user did strictly before the row's time.

Interactions are kept as event logs sorted by (user, time): one of the train period (what
training rows see) and one of the train and valid periods (what valid and test rows and
recommendations see, as a model deployed after the valid period knows them). A row's history
is a span [start, end) of a log found by binary search, so a batch's histories are one gather.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
        user = np.asarray(user, np.int64)
        start = np.searchsorted(self.user, user, "left")
        if time is None:
            return np.stack([start, np.searchsorted(self.user, user, "right")], 1)
        # (user, time) pairs as one sortable integer: user-major, time by its rank among all times
        ranks = np.unique(np.concatenate([self.time, np.asarray(time, np.float64)]), return_inverse=True)[1]
        width = ranks.max(initial=0) + 1
        keys = self.user * width + ranks[:len(self)]
        end = np.searchsorted(keys, user * width + ranks[len(self):], "left")
        return np.stack([start, end], 1)


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
class Histories:
    """The two event logs a dataset's rows read, stacked into one: ``train`` first, then ``known``."""

    train: EventLog
    known: EventLog

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
