"""The user's behaviour history as an input: event logs as buffers, two sequence encoders, and the
block that turns a row's events and candidate item into what the shared body reads."""
from __future__ import annotations

import torch
from torch import nn

import numpy as np

from polyrec.config import HistorySpec, StatsSpec
from polyrec.data.history import Histories, statistics


class EventTable(nn.Module):
    """Event logs (:class:`polyrec.data.history.Histories`) as buffers. A row's history is its
    span of the log, or, for a row without one (recommending, scoring new pairs), the user's
    span of everything known ("now")."""

    def __init__(self, item: torch.Tensor, feedback: torch.Tensor, now: torch.Tensor):
        super().__init__()
        if len(item) == 0:  # keep one masked-out event, so gathers have something to index
            item, feedback = torch.zeros(1, dtype=torch.long), torch.zeros(1, feedback.shape[1])
        self.register_buffer("item", item)
        self.register_buffer("feedback", feedback)
        self.register_buffer("now", now)

    @classmethod
    def of(cls, histories: Histories, n_users: int) -> EventTable:
        now = histories.known_spans(torch.arange(n_users).numpy())
        return cls(torch.from_numpy(histories.item), torch.from_numpy(histories.feedback), torch.from_numpy(now))

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], prefix: str = "events.") -> EventTable:
        return cls(*(state[prefix + key] for key in ("item", "feedback", "now")))

    @classmethod
    def of_user(cls, items: torch.Tensor, n_feedback: int) -> EventTable:
        """One user's events ``items`` (oldest first, no feedback recorded) as the only history."""
        return cls(items, torch.zeros(len(items), n_feedback), torch.tensor([[0, len(items)]]))

    def append_users(self, count: int) -> None:
        """New users start with an empty history."""
        self.now = torch.cat([self.now, self.now.new_zeros(count, 2)])

    def append_events(self, user: int, items: torch.Tensor) -> None:
        """``items`` (oldest first) become ``user``'s known history, with no feedback recorded."""
        start = len(self.item)
        self.item = torch.cat([self.item, items])
        self.feedback = torch.cat([self.feedback, self.feedback.new_zeros(len(items), self.feedback.shape[1])])
        self.now[user] = torch.tensor([start, start + len(items)])

    def forward(self, user: torch.Tensor, spans: torch.Tensor | None, length: int):
        """Items [B, L] and feedback [B, L, F] of each row's last L = ``length`` events, oldest first
        and left-padded; mask [B, L] is True on real events."""
        spans = self.now[user] if spans is None else spans
        index = spans[:, 1:] - length + torch.arange(length, device=spans.device)   # [B, L]
        mask = index >= spans[:, :1]
        index = index.masked_fill(~mask, 0)
        return self.item[index], self.feedback[index], mask


class StatsTable(nn.Module):
    """Each user's and item's statistics as known now (buffers), for rows without their own moment
    (recommending, scoring new pairs); see :func:`polyrec.data.history.statistics`."""

    def __init__(self, user: torch.Tensor, item: torch.Tensor, unseen: torch.Tensor):
        super().__init__()
        self.register_buffer("user", user)       # [U, 1]: activity
        self.register_buffer("item", item)       # [I, S - 1]: popularity and label means
        self.register_buffer("unseen", unseen)   # [S - 1]: an item without interactions

    @classmethod
    def of(cls, histories: Histories, n_users: int, n_items: int, spec: StatsSpec) -> StatsTable:
        def read(users, items):
            return torch.from_numpy(statistics(histories.known, users, items, None, spec.window, spec.shrinkage))

        none = np.zeros(max(n_users, n_items), np.int64)
        # catalog index n_items is in no event: it reads as an item without interactions
        return cls(read(np.arange(n_users), none[:n_users])[:, :1], read(none[:n_items], np.arange(n_items))[:, 1:],
                   read(none[:1], np.array([n_items]))[0, 1:])

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], prefix: str = "stats.") -> StatsTable:
        return cls(*(state[prefix + key] for key in ("user", "item", "unseen")))

    @property
    def width(self) -> int:
        return self.user.shape[1] + self.item.shape[1]

    def append_users(self, count: int) -> None:
        """New users start with no activity."""
        self.user = torch.cat([self.user, self.user.new_zeros(count, self.user.shape[1])])

    def of_new_users(self, count: int) -> StatsTable:
        """These statistics with ``count`` new users (no activity) as the only users."""
        return StatsTable(self.user.new_zeros(count, self.user.shape[1]), self.item, self.unseen)

    def append_items(self, count: int) -> None:
        """New items start with no interactions."""
        self.item = torch.cat([self.item, self.unseen.expand(count, -1)])

    def forward(self, user: torch.Tensor, item: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
        return stats if stats is not None else torch.cat([self.user[user], self.item[item]], 1)


class TargetAttention(nn.Module):
    """DIN (Zhou et al., KDD 2018): the candidate weighs each event by a small MLP over (event,
    candidate, difference, product). A null slot takes the weight no event earns, so an empty
    history pools to zeros and a history unrelated to the candidate can say so.

    DIN's first layer over the concatenation [e, c, e - c, e ⊙ c] is the sum of a layer over e,
    one over c and one over e ⊙ c; the candidate's term is computed once per row, not per event."""

    def __init__(self, dim: int, hidden: int = 32):
        super().__init__()
        self.event = nn.Linear(dim, hidden)
        self.candidate = nn.Linear(dim, hidden, bias=False)
        self.product = nn.Linear(dim, hidden, bias=False)
        self.out = nn.Linear(hidden, 1)

    def forward(self, events: torch.Tensor, candidate: torch.Tensor, mask: torch.Tensor):
        # events [B, L, D], candidate [B, D], mask [B, L] -> pooled [B, D], weights [B, L]
        hidden = self.event(events) + self.product(events * candidate.unsqueeze(1)) \
            + self.candidate(candidate).unsqueeze(1)                                   # [B, L, H]
        scores = self.out(torch.relu(hidden)).squeeze(-1)
        scores = torch.cat([scores.masked_fill(~mask, -torch.inf), torch.zeros_like(scores[:, :1])], 1)
        weights = torch.softmax(scores, 1)[:, :-1]
        return torch.bmm(weights.unsqueeze(1), events).squeeze(1), weights


class CausalBlock(nn.Module):
    """A pre-norm transformer layer: causal multi-head self-attention, then a feed-forward layer."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm_attention, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.project = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, queries: int) -> torch.Tensor:
        # x [B, S, D], allowed [B, S, S] (query may see key) -> [B, queries, D]: the last positions
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm_attention(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, x = q[:, :, -queries:], x[:, -queries:]                            # [B, h, Q, d], [B, Q, D]
        scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5               # [B, h, Q, S]
        scores = scores.masked_fill(~allowed[:, None, -queries:], -torch.inf)
        mixed = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(batch, queries, dim)
        x = x + self.dropout(self.project(mixed))
        return x + self.dropout(self.ff(self.norm_ff(x)))


class CausalTransformer(nn.Module):
    """SASRec-style (Kang & McAuley, ICDM 2018): events, oldest first, through causal
    self-attention; the state at the most recent event sums up the sequence. A start token
    that every position sees makes an empty history well defined. Only the last layer's last
    position is read, so that layer attends from one query instead of all."""

    def __init__(self, dim: int, length: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.start = nn.Parameter(torch.zeros(dim))
        self.position = nn.Parameter(torch.randn(length + 1, dim) * 1e-2)   # by recency slot
        self.blocks = nn.ModuleList(CausalBlock(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("causal", torch.ones(length + 1, length + 1).tril().bool(), persistent=False)

    def forward(self, events: torch.Tensor, candidate: torch.Tensor, mask: torch.Tensor):
        # events [B, L, D], mask [B, L] -> state [B, D]; no per-event weights
        # padding carries nothing (an empty history's last slot is padding, read through the residual)
        events = events.masked_fill(~mask.unsqueeze(-1), 0)
        x = torch.cat([self.start.expand(len(events), 1, -1), events], 1) + self.position   # [B, L+1, D]
        seen = torch.cat([mask.new_ones(len(mask), 1), mask], 1)                            # [B, L+1]
        allowed = self.causal & seen[:, None, :]                                            # [B, L+1, L+1]
        for depth, block in enumerate(self.blocks):
            x = block(x, allowed, 1 if depth == len(self.blocks) - 1 else x.shape[1])
        return self.norm(x[:, -1]), None


class HistoryBlock(nn.Module):
    """A row's events and candidate → [summary, summary ⊙ candidate] [B, 2D] for the shared body
    (the product lets the layers above read "how close is this item to what the user did").

    An event is its item's vector (the sum of the item's categorical embeddings, shared with the
    main input), plus its language-model vector and what the user did, each projected to D."""

    def __init__(self, spec: HistorySpec, dim: int, n_feedback: int, text_dim: int, dropout: float):
        super().__init__()
        self.feedback = nn.Linear(n_feedback, dim)
        self.text = nn.Linear(text_dim, dim) if text_dim else None
        if self.text is not None:   # start at the ID embeddings' scale (std 1e-2), as the text adaptor does
            nn.init.normal_(self.text.weight, std=1e-2 / text_dim ** 0.5)
            nn.init.zeros_(self.text.bias)
        self.encoder = TargetAttention(dim) if spec.encoder == "attention" else CausalTransformer(
            dim, spec.length, spec.layers, spec.heads, dropout)
        self.out_dim = 2 * dim

    def forward(self, items: torch.Tensor, feedback: torch.Tensor, mask: torch.Tensor, candidate: torch.Tensor,
                item_text: torch.Tensor | None = None, candidate_text: torch.Tensor | None = None):
        # items [B, L, D], feedback [B, L, F], mask [B, L], candidate [B, D], *_text [B, (L,) E]
        events = items + self.feedback(feedback)
        if self.text is not None:
            events, candidate = events + self.text(item_text), candidate + self.text(candidate_text)
        summary, weights = self.encoder(events, candidate, mask)
        return torch.cat([summary, summary * candidate], 1), weights
