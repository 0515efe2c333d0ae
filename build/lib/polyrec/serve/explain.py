"""Explanations: "because you watched …", from the history attention or from closeness in the
language model's space."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def nearest_items(item_text: torch.Tensor, items: list[int], history: np.ndarray, n: int) -> list[list[int]]:
    """For each of ``items``, the ``n`` history items with the most similar text (cosine), best first.

    Empty when there is no item text, no history or ``n`` is 0.
    """
    if item_text.shape[1] == 0 or len(history) == 0 or n <= 0 or not items:
        return []
    vectors = F.normalize(item_text, dim=1)
    history = torch.from_numpy(np.asarray(history))
    similarity = vectors[torch.tensor(items)] @ vectors[history].T  # [len(items), len(history)]
    top = torch.topk(similarity, min(n, len(history)), dim=1).indices
    return history[top].tolist()


def attended_items(model, user: int, items: list[int], n: int) -> list[list[int]]:
    """For each of ``items``, the ``n`` events of ``user``'s known history that the model's history
    attention weighed most when scoring it, most first. Empty when the user has no history."""
    if n <= 0 or not items:
        return []
    events, weights = model.attended_events(torch.full((len(items),), user), torch.tensor(items))
    out = []
    for row_events, row_weights in zip(events.tolist(), weights.tolist()):
        ranked = sorted(zip(row_weights, row_events), reverse=True)
        out.append(list(dict.fromkeys(item for weight, item in ranked if weight > 0))[:n])
    return out if any(out) else []
