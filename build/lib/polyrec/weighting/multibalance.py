"""Representation-level gradient magnitude balancing in the spirit of Meta's MultiBalance
(He et al., 2024): one backward pass through the shared parameters.

Each task's gradient w.r.t. the shared representation is measured (through the
task-specific layers only), its norm tracked by a moving average m_i, and the task's loss
weight set to mean(m)/m_i, times the task's configured ``weight`` as a priority, so that
no task's gradient dominates what the shared body learns.
"""
from typing import Annotated

import torch
from pydantic import Field

from polyrec.weighting.base import Weighting, representation_grads, task_norms, weighted_backward


class MultiBalance(Weighting):
    needs_representation = True

    def __init__(self, tasks, momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9):
        super().__init__(tasks)
        self.momentum = momentum
        self.register_buffer("norm_average", torch.zeros(len(tasks)))

    def backward(self, losses, shared, model):
        norms = task_norms(representation_grads(losses, shared)).clamp(min=1e-12)
        if self.norm_average.any():
            self.norm_average.lerp_(norms, 1 - self.momentum)
        else:
            self.norm_average.copy_(norms)
        return weighted_backward(losses, self.priority * self.norm_average.mean() / self.norm_average)
