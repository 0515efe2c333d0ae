"""MMoE (Ma et al., KDD 2018): shared experts, one softmax gate per task."""
import torch
from torch import nn

from polyrec.config import ModelSpec
from polyrec.models.layers import GroupedLinear, GroupedMLP


class MMoE(nn.Module):
    def __init__(self, in_dim: int, n_tasks: int, spec: ModelSpec):
        super().__init__()
        self.experts = GroupedMLP(in_dim, spec.expert_dims, spec.n_experts, spec.dropout, spec.batch_norm)
        self.gates = GroupedLinear(in_dim, spec.n_experts, n_tasks)
        self.out_dim = self.experts.out_dim

    def forward(self, x):
        # x [B, D] -> per-task representations [B, T, H] and the shared one every task reads [B, E, H]
        experts = self.experts(x)                  # [B, E, H]
        gates = torch.softmax(self.gates(x), -1)   # [B, T, E]
        return torch.bmm(gates, experts), experts
