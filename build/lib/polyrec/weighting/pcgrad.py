"""PCGrad, gradient surgery (Yu et al., NeurIPS 2020). Needs per-task gradients: T backward passes.

For each task, in random order against every other task: if their gradients on the
shared parameters conflict (negative dot product), remove from it the component along
the other's gradient. The projected gradients are summed; task-specific parameters get
their own task's gradient. Reported weights: each task's projected / original gradient norm.
"""
import torch

from polyrec.distributed import all_sum
from polyrec.weighting.base import Weighting


def project_conflicting(grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """grads [T, N] → projected [T, N]; each row projected against the *original* other rows."""
    projected = grads.clone()
    for i in range(len(grads)):
        for j in torch.randperm(len(grads), generator=generator).tolist():
            dot = projected[i] @ grads[j]
            if j != i and dot < 0:
                projected[i] -= dot / grads[j].pow(2).sum().clamp(min=1e-20) * grads[j]
    return projected


class PCGrad(Weighting):
    needs_parameter_grads = True
    sums_gradients = True

    def __init__(self, tasks, seed: int = 0):
        super().__init__(tasks)
        self.generator = torch.Generator().manual_seed(seed)

    # the order tasks are projected in is drawn from this generator: a resumed run continues its draws
    def get_extra_state(self):
        return self.generator.get_state()

    def set_extra_state(self, state):
        self.generator.set_state(state)

    def backward(self, losses, shared, model):
        losses = losses * self.priority
        params = [p for p in model.parameters() if p.requires_grad]
        task_only = model.task_parameters()
        is_shared = [p not in task_only for p in params]
        per_task = [torch.autograd.grad(loss, params, retain_graph=i < len(losses) - 1, allow_unused=True)
                    for i, loss in enumerate(losses)]
        per_task = [[torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)] for grads in per_task]
        # each task's whole-batch gradient (summed over processes) is what gets projected
        shared = all_sum(torch.stack([torch.cat([g.flatten() for g, s in zip(grads, is_shared) if s])
                                      for grads in per_task]))
        projected = project_conflicting(shared, self.generator)
        flat_sum, offset = projected.sum(0), 0
        for k, (p, s) in enumerate(zip(params, is_shared)):
            if s:
                grad = flat_sum[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
            else:
                grad = all_sum(sum(grads[k] for grads in per_task))
            p.grad = grad.clone() if p.grad is None else p.grad + grad
        return projected.norm(dim=1) / shared.norm(dim=1).clamp(min=1e-20)
