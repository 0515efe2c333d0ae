"""A two-tower retrieval head: user and item vectors whose inner product ranks the catalog, so an
approximate nearest-neighbour index can find a user's candidates among millions of items
(Yi et al., RecSys 2019, without the in-batch sampling correction: polyrec's rows carry sampled
negatives already). The towers read the ranker's field embeddings (kept fixed) and text, and are
trained after the ranker, so they cannot change its accuracy."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polyrec.config import RetrievalSpec
from polyrec.data.rows import Samples
from polyrec.models.layers import FeatureEmbedding, FeatureTables


def _mlp(in_dim: int, hidden: list[int], out_dim: int) -> nn.Sequential:
    layers = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim))


class TwoTower(nn.Module):
    """score(user, item) = scale · cos(user tower, item tower) + bias: a logit of ``spec.task``."""

    def __init__(self, tables: FeatureTables, embed_dim: int, spec: RetrievalSpec):
        super().__init__()
        self.towers = nn.ModuleDict({side: _mlp(self._width(tables, side, embed_dim), spec.hidden, spec.dim)
                                     for side in ("user", "item")})
        self.scale = nn.Parameter(torch.tensor(5.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    @staticmethod
    def _width(tables: FeatureTables, side: str, embed_dim: int) -> int:
        k = 0 if side == "user" else 1
        fields = tables.side_counts("cat")[k] + tables.side_counts("multi")[k]
        return fields * embed_dim + tables.side_counts("num")[k] + getattr(tables, f"{side}_text").shape[1]

    @staticmethod
    def _inputs(embedding: FeatureEmbedding, tables: FeatureTables, side: str, index: torch.Tensor) -> torch.Tensor:
        """One side's fields [N, width]: field embeddings (fixed), pooled multi-valued fields, numbers, text."""
        first, count = (0, tables.n_user_multi) if side == "user" else (tables.n_user_multi,
                                                                         tables.n_multi - tables.n_user_multi)
        with torch.no_grad():
            parts = [embedding.table(getattr(tables, f"{side}_cat")[index]).flatten(1)]
            parts += [embedding.pool(tables.multi[first + k][index]) for k in range(count)]
        parts += [getattr(tables, f"{side}_num")[index], getattr(tables, f"{side}_text")[index]]
        return torch.cat(parts, 1)

    def vectors(self, embedding: FeatureEmbedding, tables: FeatureTables, side: str,
                index: torch.Tensor) -> torch.Tensor:
        """Unit vectors [N, dim] of users or items (catalog indices ``index``)."""
        return F.normalize(self.towers[side](self._inputs(embedding, tables, side, index)), dim=1)

    @torch.no_grad()
    def catalog_vectors(self, embedding: FeatureEmbedding, tables: FeatureTables, side: str,
                        batch: int = 65536) -> torch.Tensor:
        self.eval()
        n = len(getattr(tables, f"{side}_cat"))
        return torch.cat([self.vectors(embedding, tables, side, torch.arange(a, min(a + batch, n)))
                          for a in range(0, n, batch)])

    def fit(self, embedding: FeatureEmbedding, tables: FeatureTables, samples: Samples, column: int,
            spec: RetrievalSpec, batch_size: int, seed: int) -> float:
        """Train the towers on the rows labelled for task ``column`` (binary cross-entropy); the
        last epoch's mean loss."""
        labelled = ~torch.isnan(samples.labels[:, column])
        user, item, label = samples.user[labelled], samples.item[labelled], samples.labels[labelled, column]
        optimizer = torch.optim.Adam(self.parameters(), lr=spec.lr)
        generator = torch.Generator().manual_seed(seed)
        self.train()
        for _ in range(spec.epochs):
            order, total = torch.randperm(len(user), generator=generator), 0.0
            for a in range(0, len(order), batch_size):
                rows = order[a:a + batch_size]
                logits = self.scale * (self.vectors(embedding, tables, "user", user[rows])
                                       * self.vectors(embedding, tables, "item", item[rows])).sum(1) + self.bias
                loss = F.binary_cross_entropy_with_logits(logits, label[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(rows)
        self.eval()
        return total / max(len(order), 1)
