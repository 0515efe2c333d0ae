"""SharedBottom (Caruana 1997): one MLP shared by all tasks."""
from torch import nn

from polyrec.config import ModelSpec
from polyrec.models.layers import GroupedMLP


class SharedBottom(nn.Module):
    def __init__(self, in_dim: int, n_tasks: int, spec: ModelSpec):
        super().__init__()
        self.bottom = GroupedMLP(in_dim, spec.expert_dims, 1, spec.dropout, spec.batch_norm)
        self.n_tasks, self.out_dim = n_tasks, self.bottom.out_dim

    def forward(self, x):
        # x: [B, D] -> [B, T, H], the same representation for every task, and that shared one [B, 1, H]
        shared = self.bottom(x)
        return shared.expand(-1, self.n_tasks, -1), shared
