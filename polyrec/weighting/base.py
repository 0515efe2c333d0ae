"""The weighting interface: how per-task losses become gradients.

A method sees the per-task losses and the model, calls backward itself (once, or
once per task if it needs per-task gradients) and returns the task weights it used,
for logging. It may own trainable parameters (they are optimized with the model).
The trainer knows nothing else about it.
"""
from __future__ import annotations

import torch
from torch import nn

from polyrec.config import TaskSpec


class Weighting(nn.Module):
    def __init__(self, tasks: list[TaskSpec]):
        super().__init__()
        self.n_tasks = len(tasks)

    def backward(self, losses: torch.Tensor, model: nn.Module) -> torch.Tensor:
        """Accumulate gradients for ``losses`` [T]; return the weights applied [T]."""
        raise NotImplementedError
