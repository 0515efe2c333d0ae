"""Building blocks: feature lookup and grouped MLPs.

A "group" is a set of same-shaped, independently parameterized networks (the experts
of MMoE, the towers of each task). Running a group as one batched matmul instead of a
Python loop over small Linear layers is most of polyrec's speed on CPU; per-channel
BatchNorm over the concatenated outputs equals one BatchNorm per network.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from polyrec.data.features import PAD, EncodedSide


def own_state(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` with its own tables of buffers and submodules: replacing one
    there (appending rows makes new tensors) leaves ``module`` as it was; weights stay shared."""
    clone = copy.copy(module)
    clone._buffers, clone._modules, clone._parameters = dict(module._buffers), dict(module._modules), \
        dict(module._parameters)
    return clone


class GroupedLinear(nn.Module):
    """G independent Linear(in_dim, out_dim) layers.

    Input [B, in_dim] (one input shared by all G) or [B, G, in_dim]; output [B, G, out_dim].
    """

    def __init__(self, in_dim: int, out_dim: int, groups: int):
        super().__init__()
        bound = 1 / math.sqrt(in_dim)  # nn.Linear's default initialization, per group
        self.weight = nn.Parameter(torch.empty(groups, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups, in_dim, out_dim = self.weight.shape
        if x.dim() == 2:  # shared input: one [B, in] x [in, G*out] matmul
            flat = self.weight.transpose(0, 1).reshape(in_dim, groups * out_dim)
            return torch.addmm(self.bias.reshape(-1), x, flat).view(-1, groups, out_dim)
        return torch.baddbmm(self.bias.unsqueeze(1), x.transpose(0, 1), self.weight).transpose(0, 1)


class GroupedMLP(nn.Module):
    """G independent MLPs, each (Linear → BatchNorm → ReLU → Dropout) per hidden size in ``dims``
    (without ``batch_norm``: Linear → ReLU → Dropout)."""

    def __init__(self, in_dim: int, dims: list[int], groups: int, dropout: float = 0.0, batch_norm: bool = True):
        super().__init__()
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        for out_dim in dims:
            self.linears.append(GroupedLinear(in_dim, out_dim, groups))
            self.norms.append(nn.BatchNorm1d(groups * out_dim) if batch_norm else nn.Identity())
            in_dim = out_dim
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, in] or [B, G, in] -> [B, G, dims[-1]]
        for linear, norm in zip(self.linears, self.norms):
            h = linear(x)
            x = self.dropout(torch.relu_(norm(h.reshape(h.shape[0], -1)))).view(h.shape)
        return x


class FeatureTables(nn.Module):
    """Encoded user and item tables as buffers: a batch is a gather by catalog index."""

    def __init__(self, users: EncodedSide, items: EncodedSide):
        super().__init__()
        self.register_buffer("user_cat", users.cat)
        self.register_buffer("item_cat", items.cat)
        self.register_buffer("user_num", users.num)
        self.register_buffer("item_num", items.num)
        none = lambda side: torch.zeros(len(side.cat), 0)  # noqa: E731
        self.register_buffer("user_text", users.text if users.text is not None else none(users))
        self.register_buffer("item_text", items.text if items.text is not None else none(items))
        self.n_user_multi = len(users.multi)
        self.n_multi = len(users.multi) + len(items.multi)
        for k, m in enumerate(users.multi + items.multi):
            self.register_buffer(f"multi_{k}", m)

    def append(self, side: str, rows: EncodedSide) -> None:
        """Add encoded users or items (cold start): they get the next catalog indices."""
        for name, new in (("cat", rows.cat), ("num", rows.num), ("text", rows.text)):
            old = getattr(self, f"{side}_{name}")
            new = new if new is not None else torch.zeros(len(rows.cat), old.shape[1])
            setattr(self, f"{side}_{name}", torch.cat([old, new.to(old.dtype)]))
        first = 0 if side == "user" else self.n_user_multi
        for k, new in enumerate(rows.multi):
            old = getattr(self, f"multi_{first + k}")
            width = max(old.shape[1], new.shape[1])
            pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=PAD)  # noqa: E731
            setattr(self, f"multi_{first + k}", torch.cat([pad(old), pad(new)]))

    def with_users(self, users: EncodedSide) -> FeatureTables:
        """These tables with ``users`` as their only users (the item tables shared): what scoring
        new users without adding them reads."""
        clone = own_state(self)
        clone.user_cat, clone.user_num = users.cat, users.num
        clone.user_text = users.text if users.text is not None else self.user_text.new_zeros(len(users.cat), 0)
        for k, rows in enumerate(users.multi):
            setattr(clone, f"multi_{k}", rows)
        return clone

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], n_user_multi: int, prefix: str = "tables.") -> FeatureTables:
        """The tables a saved model's state holds (their own buffers), before its weights are loaded."""
        n_multi = sum(key.startswith(f"{prefix}multi_") for key in state)
        multi = [state[f"{prefix}multi_{k}"] for k in range(n_multi)]
        side = lambda s, m: EncodedSide(state[f"{prefix}{s}_cat"], m, state[f"{prefix}{s}_num"],  # noqa: E731
                                        state[f"{prefix}{s}_text"])
        return cls(side("user", multi[:n_user_multi]), side("item", multi[n_user_multi:]))

    @property
    def multi(self) -> list[torch.Tensor]:
        return [getattr(self, f"multi_{k}") for k in range(self.n_multi)]

    @property
    def in_counts(self) -> tuple[int, int, int]:
        """(categorical fields, multi-valued fields, numeric fields) per (user, item) pair."""
        return self.user_cat.shape[1] + self.item_cat.shape[1], len(self.multi), \
            self.user_num.shape[1] + self.item_num.shape[1]

    def side_counts(self, kind: str) -> tuple[int, int]:
        """(user, item) field counts of one kind: ``cat``, ``multi`` or ``num``."""
        if kind == "multi":
            return self.n_user_multi, self.n_multi - self.n_user_multi
        return getattr(self, f"user_{kind}").shape[1], getattr(self, f"item_{kind}").shape[1]

    def forward(self, user: torch.Tensor, item: torch.Tensor):
        cat = torch.cat([self.user_cat[user], self.item_cat[item]], 1)
        multi = [m[user if k < self.n_user_multi else item] for k, m in enumerate(self.multi)]
        num = torch.cat([self.user_num[user], self.item_num[item]], 1)
        return cat, multi, num, self.item_text[item], self.user_text[user]


class FeatureEmbedding(nn.Module):
    """One embedding table for all categorical features; multi-valued ones mean-pooled.

    Output [B, n_cat*D + n_multi*D + n_num]: embeddings, pooled embeddings, numeric values.
    """

    def __init__(self, num_embeddings: int, dim: int, counts: tuple[int, int, int]):
        super().__init__()
        self.table = nn.Embedding(num_embeddings, dim)
        nn.init.normal_(self.table.weight, std=1e-2)
        n_cat, n_multi, n_num = counts
        self.out_dim = (n_cat + n_multi) * dim + n_num

    def forward(self, cat: torch.Tensor, multi: list[torch.Tensor], num: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.table(cat).flatten(1)] + [self.pool(idx) for idx in multi] + [num], 1)

    def grow(self, rows: torch.Tensor) -> None:
        """Append embedding rows [n, D] to the table (new vocabulary entries)."""
        weight = torch.cat([self.table.weight.detach(), rows.to(self.table.weight.dtype)])
        self.table = nn.Embedding.from_pretrained(weight, freeze=False)

    def pool(self, idx: torch.Tensor) -> torch.Tensor:
        """Mean embedding [B, D] of a multi-valued feature's indices [B, L] (padded with PAD)."""
        valid = (idx != PAD).unsqueeze(-1)
        return (self.table(idx.clamp(min=0)) * valid).sum(1) / valid.sum(1).clamp(min=1)
