"""Static weights: Σ λ_i ℓ_i with λ_i from each task's ``weight`` (1.0 = equal weighting)."""
import torch

from polyrec.weighting.base import Weighting


class Static(Weighting):
    def __init__(self, tasks, weights: dict[str, float] | None = None):
        super().__init__(tasks)
        weights = weights or {}
        self.register_buffer("weights", torch.tensor([weights.get(t.name, t.weight) for t in tasks]))

    def backward(self, losses, model):
        (losses * self.weights).sum().backward()
        return self.weights
