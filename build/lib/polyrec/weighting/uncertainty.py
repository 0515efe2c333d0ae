"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018), one backward pass.

Each task learns s_i = log σ_i². A regression loss enters as ½·e^{-s}·ℓ + ½·s (Gaussian
likelihood), a classification loss as e^{-s}·ℓ + ½·s (scaled softmax/sigmoid). s is
unconstrained, so a task's weight can grow above its start as well as shrink.
"""
import torch
from torch import nn

from polyrec.weighting.base import Weighting


class Uncertainty(Weighting):
    def __init__(self, tasks):
        super().__init__(tasks)
        self.log_var = nn.Parameter(torch.zeros(len(tasks)))
        self.register_buffer("scale", torch.tensor([0.5 if t.kind == "regression" else 1.0 for t in tasks]))

    def backward(self, losses, shared, model):
        weights = self.priority * self.scale * torch.exp(-self.log_var)
        (weights * losses + 0.5 * self.log_var).sum().backward()
        return weights.detach()
