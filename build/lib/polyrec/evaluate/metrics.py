"""Vectorized metrics: pointwise (AUC, GAUC, logloss, RMSE, MAE) and top-K ranking.

Ranking follows RecBole's definitions: Recall@K = hits / |ground truth|; NDCG@K with
the ideal DCG over min(|ground truth|, K); averages over users with ground truth.
"""
from __future__ import annotations

from collections.abc import Callable

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


class RankingAccumulator:
    """Sums Recall/NDCG/MRR/HitRate@K over user chunks; coverage@K over all recommended items.

    Beyond accuracy (Kaminskas & Bridge, 2016): ``item_vectors`` (catalog indices [n] → unit rows
    [n, V], asked for the listed items only) give intra-list diversity ``ild@K``, the mean 1 − cosine over the pairs of a list; ``popularity``
    [n_items] (the share of users who interacted with each item) gives ``novelty@K``, the mean
    self-information −log2 p of the listed items.
    """

    def __init__(self, ks: list[int], n_items: int, item_vectors: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 popularity: torch.Tensor | None = None):
        self.ks, self.n_items = sorted(ks), n_items
        self.item_vectors = item_vectors
        self.surprise = -torch.log2(popularity.double()) if popularity is not None else None
        names = ("recall", "ndcg", "mrr", "hit") + (("ild",) if item_vectors is not None else ()) \
            + (("novelty",) if popularity is not None else ())
        self.sums = {f"{m}@{k}": 0.0 for k in self.ks for m in names}
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
            if self.item_vectors is not None and k > 1:
                listed, position = torch.unique(top[:, :k], return_inverse=True)
                v = self.item_vectors(listed).double()[position]            # [U, k, V]
                similarity = (v @ v.transpose(1, 2)).sum((1, 2)) - (v * v).sum((1, 2))
                self.sums[f"ild@{k}"] += float((1 - similarity / (k * (k - 1))).sum())
            if self.surprise is not None:
                self.sums[f"novelty@{k}"] += float(self.surprise[top[:, :k]].mean(1).sum())
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
