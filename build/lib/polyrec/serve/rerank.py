"""From scores to a list: fuse the tasks' scores into one, take the top k, reserve slots for new
items, and diversify (MMR). Recommend, the service and the ranking evaluator share these."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

_EPS = 1e-7


def fuse(scores: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """One ranking score Π s_t^w_t over the named scores (probabilities, or positive regression
    values such as a rating), computed as Σ w_t·log s_t, which orders items the same way."""
    return sum(w * torch.log(scores[name].clamp(min=_EPS)) for name, w in weights.items() if w)


@dataclass
class Exposure:
    """A new-arrivals policy: up to ``slots`` of each top-k list go to ``new`` items [n_items]
    (bool) whose score is at least ``threshold``, in place of the lowest-scored others."""

    new: torch.Tensor
    slots: int
    threshold: float = 0.0


@dataclass
class Diversity:
    """Maximal marginal relevance (Carbonell & Goldstein, 1998) over the ``pool`` best items:
    each next item maximises (1−λ)·relevance − λ·(its highest cosine similarity to the items
    already chosen), relevance min-max scaled within the pool. ``vectors`` [n_items, D]: the
    item space similarity is measured in. λ = 0 is the plain ranking."""

    vectors: torch.Tensor
    lam: float
    pool: int = 100


def _order(scores: torch.Tensor) -> torch.Tensor:
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def topk_items(scores: torch.Tensor, k: int, exposure: Exposure | None = None,
               diversity: Diversity | None = None) -> torch.Tensor:
    """Top-k item indices per row by score [U, n_items], ties broken by the lower item index; with
    ``exposure``, its reserved new items are in the list, which stays ordered by score; with
    ``diversity``, chosen by MMR from the best ``diversity.pool`` (not combinable with exposure)."""
    if diversity is not None and diversity.lam > 0:
        if exposure is not None and exposure.slots:
            raise ValueError("new-item slots and diversity cannot be combined in one list; use one of them")
        pool = _order(scores)[:, :max(k, diversity.pool)]
        chosen = mmr(scores.gather(1, pool), F.normalize(diversity.vectors, dim=1)[pool], k, diversity.lam)
        return pool.gather(1, chosen)
    if exposure is None or not exposure.slots:
        return _order(scores)[:, :k]
    eligible = scores.masked_fill(~exposure.new | (scores < exposure.threshold), -np.inf)
    reserved = eligible.topk(min(exposure.slots, k, scores.shape[1]), dim=1)
    boosted = scores.scatter(1, reserved.indices, torch.where(torch.isfinite(reserved.values), np.inf,
                                                              scores.gather(1, reserved.indices)))
    top = _order(boosted)[:, :k]
    return top.gather(1, _order(scores.gather(1, top)))


def mmr(relevance: torch.Tensor, vectors: torch.Tensor, k: int, lam: float) -> torch.Tensor:
    """Greedy MMR for each row: ``relevance`` [U, M] (best first), unit ``vectors`` [U, M, D]; the
    positions [U, k] chosen, in order. Excluded candidates (−inf) come last, in pool order."""
    finite = torch.isfinite(relevance)
    low = torch.where(finite, relevance, np.inf).min(1, keepdim=True).values
    high = torch.where(finite, relevance, -np.inf).max(1, keepdim=True).values
    scaled = torch.where(finite, (relevance - low) / (high - low).clamp(min=_EPS), -1e9)
    similarity = vectors @ vectors.transpose(1, 2)                      # [U, M, M]
    closest = torch.full_like(scaled, -1.0)                              # max similarity to the chosen so far
    taken = torch.zeros_like(scaled, dtype=torch.bool)
    rows = torch.arange(len(scaled))
    chosen = []
    for _ in range(min(k, scaled.shape[1])):
        value = (1 - lam) * scaled - lam * closest.clamp(min=0)
        pick = value.masked_fill(taken, -np.inf).argmax(1)                # first of equals: pool order
        chosen.append(pick)
        taken[rows, pick] = True
        closest = torch.maximum(closest, similarity[rows, pick])
    return torch.stack(chosen, 1)


def field_vectors(item_cat: torch.Tensor, item_multi: list[torch.Tensor], skip_column: int | None) -> torch.Tensor:
    """[n_items, V] unit vectors: which values each item has in its categorical fields (except
    ``skip_column``, the ID) and multi-valued fields (e.g. genres), so cosine similarity is the
    share of field values two items have in common. Independent of any trained weights."""
    keep = [c for c in range(item_cat.shape[1]) if c != skip_column]
    index = torch.cat([item_cat[:, keep], *item_multi], 1) if keep or item_multi else item_cat[:, :0]
    values, compact = torch.unique(index, return_inverse=True)
    vectors = torch.zeros(len(index), len(values)).scatter_(1, compact, 1.0)
    vectors[:, values < 0] = 0    # the padding of multi-valued fields is no value
    return F.normalize(vectors, dim=1)
