"""GradNorm (Chen et al., ICML 2018), at the shared representation.

Learned weights w_i are pulled so that each weighted task gradient norm G_i = w_i·‖∇ℓ_i‖
approaches mean(G)·r_i^α, where r_i is task i's loss relative to its first loss, over
the mean of those ratios (tasks that trained slower get larger gradients). As in the
paper, the norms are taken at the last shared layer, here its output (the shared
representation): per-task gradients through the task-specific layers only, then one
backward of Σ w_i ℓ_i. Weights are renormalized to sum to T before every step.
"""
import torch
from torch import nn

from polyrec.weighting.base import NonNegative, Weighting, representation_grads, task_norms


class GradNorm(Weighting):
    needs_representation = True
    honours_task_weights = False   # it sets each task's weight itself

    def __init__(self, tasks, alpha: NonNegative = 1.5):
        super().__init__(tasks)
        self.alpha = alpha
        self.weights = nn.Parameter(torch.ones(len(tasks)))
        self.register_buffer("initial_loss", torch.zeros(len(tasks)))

    def backward(self, losses, shared, model):
        with torch.no_grad():  # the paper's renormalization, after the previous optimizer step
            self.weights.clamp_(min=1e-3).mul_(len(losses) / self.weights.sum())
            if not self.initial_loss.any():
                self.initial_loss.copy_(losses.clamp(min=1e-12))
        used = self.weights.detach().clone()
        norms = task_norms(representation_grads(losses, shared))
        ratio = losses.detach() / self.initial_loss
        target = (used * norms).mean() * (ratio / ratio.mean()) ** self.alpha
        # ∂/∂w_i of Σ|w_i·‖∇ℓ_i‖ − target_i| with the target held constant, as in the paper
        self.weights.grad = torch.sign(used * norms - target) * norms
        (used * losses).sum().backward()
        return used
