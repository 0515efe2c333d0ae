"""Cold start: an ID embedding generated from content, for items (and users) with few or no interactions.

An ID embedding is learned from interactions, so a new item has none: out-of-vocabulary IDs all
share one "unknown" vector. The generator maps what a new item does have (its language-model
vector and side fields) to where a warm item with that content sits in the ID-embedding space.
An entity's embedding is the blend ``a·own + (1 - a)·generated`` with ``a = n / (n + blend)``
for its ``n`` training interactions: new entities (n = 0, or an OOV ID) are all generator, warm
ones all their own.

Two ways to train it (``cold_start.method``):

- ``dropout`` (DropoutNet, Volkovs et al. 2017): jointly with the tasks; the rows whose ID
  ``model.oov_dropout`` hides, and rare entities through the blend, are scored from the
  generated embedding, so the generator learns what the task losses need;
- ``align``: after training, a regression of the trained embeddings of warm entities on their
  content (weighted by ``a``); the network never sees a generated embedding while training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polyrec.models.layers import FeatureEmbedding


class SideLayout:
    """Where one side's (user or item) inputs sit in the model's concatenated inputs."""

    def __init__(self, side: str, n_cat: tuple[int, int], n_multi: tuple[int, int], n_num: tuple[int, int],
                 id_column: int):
        first = side == "item"
        self.cat = slice(n_cat[0], n_cat[0] + n_cat[1]) if first else slice(0, n_cat[0])
        self.multi = slice(n_multi[0], n_multi[0] + n_multi[1]) if first else slice(0, n_multi[0])
        self.num = slice(n_num[0], n_num[0] + n_num[1]) if first else slice(0, n_num[0])
        self.id_column = id_column                      # in the concatenated categorical input
        side_cat = range(self.cat.start, self.cat.stop)
        self.others = [c for c in side_cat if c != id_column]
        self.n_multi, self.n_num = n_multi[first], n_num[first]


class IdGenerator(nn.Module):
    """Content [B, C] → ID embedding [B, D]; content = the side's other categorical fields' and
    multi-valued fields' embeddings, its numeric fields and its language-model vector."""

    def __init__(self, layout: SideLayout, dim: int, text_dim: int, hidden: int, oov: int, blend: float,
                 method: str):
        super().__init__()
        self.layout, self.oov, self.blend, self.method = layout, oov, blend, method
        in_dim = (len(layout.others) + layout.n_multi) * dim + layout.n_num + text_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        # "align" is usable once fitted; "dropout" trains with the model
        self.register_buffer("ready", torch.tensor(method == "dropout"))

    def content(self, embedding: FeatureEmbedding, cat, multi, num, text) -> torch.Tensor:
        """The side's content [B, C] from the model's concatenated inputs."""
        layout = self.layout
        parts = [embedding.table(cat[:, layout.others]).flatten(1)]
        parts += [embedding.pool(idx) for idx in multi[layout.multi]]
        return torch.cat(parts + [num[:, layout.num], text], 1)

    def own_weight(self, ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """``a`` [B, 1]: how much an entity's own embedding counts (0 for an OOV ID)."""
        a = counts / (counts + self.blend)
        return torch.where(ids == self.oov, torch.zeros_like(a), a).unsqueeze(1)

    def forward(self, x: torch.Tensor, embedding: FeatureEmbedding, cat, multi, num, text,
                counts: torch.Tensor) -> torch.Tensor:
        """``x`` [B, in] (FeatureEmbedding's output) with the side's ID embedding blended."""
        if not bool(self.ready):
            return x
        column, dim = self.layout.id_column, embedding.table.embedding_dim
        own = x[:, column * dim:(column + 1) * dim]
        a = self.own_weight(cat[:, column], counts)
        mixed = a * own + (1 - a) * self.net(self.content(embedding, cat, multi, num, text))
        return torch.cat([x[:, :column * dim], mixed, x[:, (column + 1) * dim:]], 1)

    def align(self, embedding: FeatureEmbedding, cat, multi, num, text, counts: torch.Tensor,
              steps: int = 500, lr: float = 1e-2) -> float:
        """Fit the generator to the trained ID embeddings of the side's warm entities (one row
        per entity), weighted by how much their own embedding counts; returns the final loss."""
        with torch.no_grad():
            ids = cat[:, self.layout.id_column]
            weight = self.own_weight(ids, counts).squeeze(1)
            keep = weight > 0
            content = self.content(embedding, cat, multi, num, text)[keep]
            target, weight = embedding.table(ids[keep]), weight[keep]
        optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        for _ in range(steps):
            optimizer.zero_grad()
            loss = (weight * F.mse_loss(self.net(content), target, reduction="none").sum(1)).sum() / weight.sum()
            loss.backward()
            optimizer.step()
        self.ready.fill_(True)
        return float(loss.detach())
