"""FAMO, fast adaptive multitask optimization (Liu et al., NeurIPS 2023): O(1) per step,
one backward pass, no per-task gradients.

Task logits ξ give z = softmax(ξ); the model descends Σ z_i log ℓ_i, i.e. loss weights
w_i ∝ z_i / ℓ_i. ξ then moves so that every task's log loss falls at the same rate:
ξ ← ξ − β(δ + γξ), δ = ∂z/∂ξᵀ (log ℓ_prev − log ℓ_now). The paper re-evaluates the same
batch after the step; here the next step's batch stands in (no extra forward pass).
"""
import torch

from polyrec.weighting.base import NonNegative, Positive, Weighting, weighted_backward


class FAMO(Weighting):
    def __init__(self, tasks, lr: Positive = 0.025, decay: NonNegative = 0.001):
        super().__init__(tasks)
        self.lr, self.decay = lr, decay
        self.register_buffer("logits", torch.zeros(len(tasks)))
        self.register_buffer("previous_log_loss", torch.full((len(tasks),), float("nan")))

    def backward(self, losses, shared, model):
        log_loss = losses.detach().clamp(min=1e-12).log()
        if not torch.isnan(self.previous_log_loss).any():
            xi = self.logits.clone().requires_grad_()
            (delta,) = torch.autograd.grad(torch.softmax(xi, 0) @ (self.previous_log_loss - log_loss), xi)
            self.logits -= self.lr * (delta + self.decay * self.logits)
        self.previous_log_loss = log_loss
        return weighted_backward(losses, self.priority * torch.softmax(self.logits, 0) / log_loss.exp())
