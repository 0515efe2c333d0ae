"""PLE (Tang et al., RecSys 2020): stacked CGC levels of task-specific and shared experts.

At each level task t mixes its own experts with the shared ones through its gate;
below the last level a shared gate over all experts feeds the next level's shared experts.
"""
import torch
from torch import nn

from polyrec.config import ModelSpec
from polyrec.models.layers import GroupedMLP


class CGCLevel(nn.Module):
    def __init__(self, in_dim: int, n_tasks: int, spec: ModelSpec, last: bool):
        super().__init__()
        k, s = spec.ple_task_experts, spec.ple_shared_experts
        n_experts = n_tasks * k + s
        self.experts = GroupedMLP(in_dim, spec.expert_dims, n_experts, spec.dropout, spec.batch_norm)
        # expert e reads input slot e // k for task experts, slot n_tasks (shared) otherwise
        self.register_buffer("expert_input", torch.tensor([e // k for e in range(n_tasks * k)] + [n_tasks] * s),
                             persistent=False)
        allowed = [list(range(t * k, (t + 1) * k)) + list(range(n_tasks * k, n_experts)) for t in range(n_tasks)]
        if not last:
            allowed.append(list(range(n_experts)))
        self.allowed = [torch.tensor(a) for a in allowed]
        self.gates = nn.ModuleList(nn.Linear(in_dim, len(a)) for a in allowed)
        self.n_experts, self.out_dim = n_experts, self.experts.out_dim

    def forward(self, x):
        # x: [B, D] at the first level, else [B, T+1, D] (one input per task, then the shared one);
        # returns [B, T(+1), H] and the level's experts [B, n_experts, H]
        if x.dim() == 2:
            experts, gate_in = self.experts(x), [x] * len(self.gates)
        else:
            experts, gate_in = self.experts(x[:, self.expert_input]), x.unbind(1)
        weights = [torch.zeros(x.shape[0], self.n_experts, device=x.device).index_copy(
            1, idx.to(x.device), torch.softmax(gate(inp), -1)) for gate, inp, idx in zip(self.gates, gate_in, self.allowed)]
        return torch.bmm(torch.stack(weights, 1), experts), experts


class PLE(nn.Module):
    def __init__(self, in_dim: int, n_tasks: int, spec: ModelSpec):
        super().__init__()
        self.levels = nn.ModuleList()
        for level in range(spec.ple_levels):
            self.levels.append(CGCLevel(in_dim, n_tasks, spec, last=level == spec.ple_levels - 1))
            in_dim = self.levels[-1].out_dim
        self.out_dim = in_dim

    def forward(self, x):
        # -> [B, T, H], and as the shared representation the top level's experts: each task reads
        # its own and the shared ones (a task's gradient to another task's experts is zero)
        for level in self.levels:
            x, experts = level(x)
        return x, experts
