"""Static weights: Σ λ_i ℓ_i with λ_i from each task's ``weight`` (1.0 = equal weighting)."""
import torch

from polyrec.errors import ConfigError
from polyrec.weighting.base import NonNegative, Weighting


class Static(Weighting):
    def __init__(self, tasks, weights: dict[str, NonNegative] | None = None):
        super().__init__(tasks)
        weights = weights or {}
        unknown = set(weights) - {t.name for t in tasks}
        if unknown:
            raise ConfigError(f"weighting.options.weights names unknown task(s) {sorted(unknown)}; the tasks are "
                              f"{[t.name for t in tasks]}")
        self.register_buffer("weights", torch.tensor([float(weights.get(t.name, t.weight)) for t in tasks]))

    def backward(self, losses, shared, model):
        (losses * self.weights).sum().backward()
        return self.weights
