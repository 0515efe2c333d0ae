"""MGDA-UB (Sener & Koltun, NeurIPS 2018): the min-norm convex combination of task gradients,
taken at the shared representation (the paper's upper bound), so only one backward pass
goes through the shared body.

``normalize``: ``loss+`` divides each task gradient by its loss times its norm (the
paper's choice on mixed losses), ``l2`` by its norm, ``none`` leaves it.
"""
from typing import Literal

import numpy as np
import torch

from polyrec.weighting.base import Weighting, representation_grads, task_gram, weighted_backward


def min_norm_weights(gram: torch.Tensor, iterations: int = 50) -> torch.Tensor:
    """α on the simplex minimizing ‖Σ α_i g_i‖² = αᵀGα, from the task gradients' Gram matrix
    G [T, T], by Frank-Wolfe with exact line search."""
    # the loop runs in NumPy (on a [T, T] matrix, torch's per-call overhead dominated it), on the CPU
    dtype, device, gram = gram.dtype, gram.device, gram.detach().double().cpu().numpy()
    alpha = np.full(len(gram), 1 / len(gram))
    for _ in range(iterations):
        gram_alpha = gram @ alpha
        toward = int(np.argmin(gram_alpha))
        # line search on ‖(1-γ)·v + γ·g_t‖² where v = Σ α_i g_i
        vv, vg, gg = alpha @ gram_alpha, gram_alpha[toward], gram[toward, toward]
        if vv - 2 * vg + gg <= 1e-20:
            break
        gamma = min(max((vv - vg) / (vv - 2 * vg + gg), 0.0), 1.0)
        if gamma < 1e-8:
            break
        alpha = (1 - gamma) * alpha
        alpha[toward] += gamma
    return torch.from_numpy(alpha).to(device, dtype)


class MGDA(Weighting):
    needs_representation = True
    honours_task_weights = False   # it sets each task's weight itself

    def __init__(self, tasks, normalize: Literal["loss+", "l2", "none"] = "loss+"):
        super().__init__(tasks)
        self.normalize = normalize

    def backward(self, losses, shared, model):
        gram = task_gram(representation_grads(losses, shared))
        scale = torch.ones(len(losses), device=losses.device)
        if self.normalize != "none":   # normalized on the Gram matrix: the [T, N] gradients are never copied
            scale = gram.diagonal().sqrt().clamp(min=1e-12)
            if self.normalize == "loss+":
                scale = scale * losses.detach().clamp(min=1e-12)
        alpha = min_norm_weights(gram / torch.outer(scale, scale))
        return weighted_backward(losses, alpha / scale)
