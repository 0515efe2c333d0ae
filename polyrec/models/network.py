"""The multi-task model: feature tables → embeddings → shared body (architecture) → task towers."""
from __future__ import annotations

import torch
from torch import nn

from polyrec.config import ModelSpec
from polyrec.models.layers import FeatureEmbedding, FeatureTables, GroupedLinear, GroupedMLP
from polyrec.models.mmoe import MMoE
from polyrec.models.ple import PLE
from polyrec.models.sharedbottom import SharedBottom

# An architecture maps [B, D] inputs to [B, T, H] per-task representations.
ARCHITECTURES = {"sharedbottom": SharedBottom, "mmoe": MMoE, "ple": PLE}


class TaskNetwork(nn.Module):
    """Embeddings, a shared body and one tower per task: features → logits [B, T]."""

    def __init__(self, num_embeddings: int, counts: tuple[int, int, int], n_tasks: int, spec: ModelSpec,
                 arch: str):
        super().__init__()
        self.embedding = FeatureEmbedding(num_embeddings, spec.embed_dim, counts)
        self.body = ARCHITECTURES[arch](self.embedding.out_dim, n_tasks, spec)
        self.towers = GroupedMLP(self.body.out_dim, spec.tower_dims, n_tasks, spec.dropout)
        self.heads = GroupedLinear(self.towers.out_dim, 1, n_tasks)

    def forward(self, cat, multi, num):
        x = self.embedding(cat, multi, num)              # [B, D]
        return self.heads(self.towers(self.body(x))).squeeze(-1)  # [B, T]


class MultiTaskModel(nn.Module):
    """Scores (user, item) catalog indices for every task; outputs logits (binary) or values (regression).

    ``arch='single'`` is the single-task baseline: one independent network per task
    (its own embeddings too), trained side by side; no parameter is shared.
    """

    def __init__(self, tables: FeatureTables, num_embeddings: int, n_tasks: int, spec: ModelSpec):
        super().__init__()
        self.tables = tables
        counts = tables.in_counts
        if spec.arch == "single":
            self.nets = nn.ModuleList(TaskNetwork(num_embeddings, counts, 1, spec, "sharedbottom")
                                      for _ in range(n_tasks))
        else:
            self.nets = nn.ModuleList([TaskNetwork(num_embeddings, counts, n_tasks, spec, spec.arch)])

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        features = self.tables(user, item)
        return torch.cat([net(*features) for net in self.nets], 1)

    def set_output_bias(self, values: list[float | None]) -> None:
        """Start each task's output at a given value (e.g. the mean rating), so regression
        towers do not spend the first epoch learning the label's offset."""
        heads = [net.heads.bias for net in self.nets]
        flat = [(h, g) for h in heads for g in range(h.shape[0])]
        with torch.no_grad():
            for (bias, g), value in zip(flat, values):
                if value is not None:
                    bias[g].fill_(value)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
