"""Vectorized metrics: pointwise (AUC, GAUC, logloss, RMSE, MAE) and top-K ranking.

Ranking follows RecBole's definitions: Recall@K = hits / |ground truth|; NDCG@K with
the ideal DCG over min(|ground truth|, K); averages over users with ground truth.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _grouped_auc(group: np.ndarray, score: np.ndarray, label: np.ndarray):
    """Mann-Whitney AUC within each group, ties given their average rank.

    Returns (auc per group, rows per group, whether the group has both classes).
    """
    order = np.lexsort((score, group))
    g, s, y = group[order], score[order], label[order].astype(bool)
    new_group = np.r_[True, g[1:] != g[:-1]]
    group_start = np.flatnonzero(new_group)
    sizes = np.diff(np.r_[group_start, len(g)])
    new_tie = new_group | np.r_[True, s[1:] != s[:-1]]
    tie_id = np.cumsum(new_tie) - 1
    pos = np.arange(len(g)) - np.repeat(group_start, sizes) + 1
    tie_rank = np.bincount(tie_id, weights=pos) / np.bincount(tie_id)
    group_id = np.cumsum(new_group) - 1
    rank_sum = np.bincount(group_id, weights=tie_rank[tie_id] * y)
    n_pos = np.bincount(group_id, weights=y)
    n_neg = sizes - n_pos
    both = (n_pos > 0) & (n_neg > 0)
    auc = np.divide(rank_sum - n_pos * (n_pos + 1) / 2, n_pos * n_neg, out=np.full(len(sizes), np.nan), where=both)
    return auc, sizes, both


def auc(label: np.ndarray, score: np.ndarray) -> float:
    values, _, both = _grouped_auc(np.zeros(len(label), np.int64), np.asarray(score), np.asarray(label))
    return float(values[0]) if both[0] else float("nan")


def gauc(user: np.ndarray, label: np.ndarray, score: np.ndarray) -> float:
    """Per-user AUC weighted by the user's row count, over users with both classes."""
    values, sizes, both = _grouped_auc(np.asarray(user), np.asarray(score), np.asarray(label))
    return float(np.average(values[both], weights=sizes[both])) if both.any() else float("nan")


def logloss(label: np.ndarray, prob: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(prob, eps, 1 - eps)
    return float(-np.mean(label * np.log(p) + (1 - label) * np.log(1 - p)))


def rmse(target: np.ndarray, pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - target) ** 2)))


def mae(target: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - target)))


@dataclass
class Exposure:
    """A new-arrivals policy: up to ``slots`` of each top-k list go to ``new`` items [n_items]
    (bool) whose score is at least ``threshold``, in place of the lowest-scored others."""

    new: torch.Tensor
    slots: int
    threshold: float = 0.0


def topk_items(scores: torch.Tensor, k: int, exposure: Exposure | None = None) -> torch.Tensor:
    """Top-k item indices per row by score, ties broken by the lower item index; with
    ``exposure``, its reserved new items are in the list, which stays ordered by score."""
    order = lambda s: torch.sort(s, dim=1, descending=True, stable=True).indices  # noqa: E731
    if exposure is None or not exposure.slots:
        return order(scores)[:, :k]
    eligible = scores.masked_fill(~exposure.new | (scores < exposure.threshold), -np.inf)
    reserved = eligible.topk(min(exposure.slots, k, scores.shape[1]), dim=1)
    boosted = scores.scatter(1, reserved.indices, torch.where(torch.isfinite(reserved.values), np.inf,
                                                              scores.gather(1, reserved.indices)))
    top = order(boosted)[:, :k]
    return top.gather(1, order(scores.gather(1, top)))


class RankingAccumulator:
    """Sums Recall/NDCG/MRR/HitRate@K over user chunks; coverage@K over all recommended items."""

    def __init__(self, ks: list[int], n_items: int):
        self.ks, self.n_items = sorted(ks), n_items
        self.sums = {f"{m}@{k}": 0.0 for k in self.ks for m in ("recall", "ndcg", "mrr", "hit")}
        self.users = 0
        self.recommended = {k: torch.zeros(n_items, dtype=torch.bool) for k in self.ks}
        self.by_user: dict[str, list[torch.Tensor]] = {"user": [], **{f"ndcg@{k}": [] for k in self.ks}}

    def add(self, top: torch.Tensor, truth: torch.Tensor, users: torch.Tensor | None = None) -> None:
        """top: [U, K_max] ranked item indices; truth: [U, n_items] bool ground truth; ``users`` [U]:
        their ids, to keep each user's NDCG (:meth:`per_user`)."""
        n_truth = truth.sum(1)
        keep = n_truth > 0
        if users is not None:
            self.by_user["user"].append(users[keep])
        top, truth, n_truth = top[keep], truth[keep], n_truth[keep].double()
        hits = truth.gather(1, top).double()                      # [U, K_max]
        discount = 1.0 / torch.log2(torch.arange(2, top.shape[1] + 2, dtype=torch.float64))
        ideal = torch.cumsum(discount, 0)
        first_hit = torch.where(hits.any(1), hits.argmax(1) + 1, 0).double()
        for k in self.ks:
            h = hits[:, :k]
            self.sums[f"recall@{k}"] += float((h.sum(1) / n_truth).sum())
            dcg = (h * discount[:k]).sum(1)
            ndcg = dcg / ideal[(n_truth.clamp(max=k) - 1).long()]
            self.sums[f"ndcg@{k}"] += float(ndcg.sum())
            if users is not None:
                self.by_user[f"ndcg@{k}"].append(ndcg)
            in_k = (first_hit > 0) & (first_hit <= k)
            self.sums[f"mrr@{k}"] += float(torch.where(in_k, 1.0 / first_hit.clamp(min=1), 0.0).sum())
            self.sums[f"hit@{k}"] += float(h.any(1).double().sum())
            self.recommended[k][top[:, :k].reshape(-1)] = True
        self.users += int(keep.sum())

    def per_user(self) -> dict[str, np.ndarray]:
        """Each evaluated user's id and NDCG@K (users passed to :meth:`add`), e.g. for a bootstrap."""
        return {name: torch.cat(parts).numpy() if parts else np.zeros(0) for name, parts in self.by_user.items()}

    def result(self) -> dict[str, float]:
        out = {name: value / max(self.users, 1) for name, value in self.sums.items()}
        out.update({f"coverage@{k}": float(self.recommended[k].double().mean()) for k in self.ks})
        out["users"] = self.users
        return out
