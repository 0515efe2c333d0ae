"""The user's behaviour history as an input: event logs as buffers, two sequence encoders, and the
block that turns a row's events and candidate item into what the shared body reads."""
from __future__ import annotations

import torch
from torch import nn

from polyrec.config import HistorySpec
from polyrec.data.history import Histories


class EventTable(nn.Module):
    """Event logs (:class:`polyrec.data.history.Histories`) as buffers. A row's history is its
    span of the log, or, for a row without one (recommending, scoring new pairs), the user's
    span of everything known ("now")."""

    def __init__(self, item: torch.Tensor, feedback: torch.Tensor, now: torch.Tensor, length: int):
        super().__init__()
        self.length = length
        if len(item) == 0:  # keep one masked-out event, so gathers have something to index
            item, feedback = torch.zeros(1, dtype=torch.long), torch.zeros(1, feedback.shape[1])
        self.register_buffer("item", item)
        self.register_buffer("feedback", feedback)
        self.register_buffer("now", now)

    @classmethod
    def of(cls, histories: Histories, n_users: int, length: int) -> EventTable:
        now = histories.known_spans(torch.arange(n_users).numpy())
        return cls(torch.from_numpy(histories.item), torch.from_numpy(histories.feedback), torch.from_numpy(now),
                   length)

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], length: int, prefix: str = "events.") -> EventTable:
        return cls(*(state[prefix + key] for key in ("item", "feedback", "now")), length)

    def append_users(self, count: int) -> None:
        """New users start with an empty history."""
        self.now = torch.cat([self.now, self.now.new_zeros(count, 2)])

    def forward(self, user: torch.Tensor, spans: torch.Tensor | None = None):
        """Items [B, L] and feedback [B, L, F] of each row's last L events, oldest first and
        left-padded; mask [B, L] is True on real events."""
        spans = self.now[user] if spans is None else spans
        index = spans[:, 1:] - self.length + torch.arange(self.length)   # [B, L]
        mask = index >= spans[:, :1]
        index = index.masked_fill(~mask, 0)
        return self.item[index], self.feedback[index], mask


class TargetAttention(nn.Module):
    """DIN (Zhou et al., KDD 2018): the candidate weighs each event by a small MLP over (event,
    candidate, difference, product). A null slot takes the weight no event earns, so an empty
    history pools to zeros and a history unrelated to the candidate can say so."""

    def __init__(self, dim: int, hidden: int = 32):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(4 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, events: torch.Tensor, candidate: torch.Tensor, mask: torch.Tensor):
        # events [B, L, D], candidate [B, D], mask [B, L] -> pooled [B, D], weights [B, L]
        c = candidate.unsqueeze(1).expand_as(events)
        scores = self.score(torch.cat([events, c, events - c, events * c], -1)).squeeze(-1)
        scores = torch.cat([scores.masked_fill(~mask, -torch.inf), scores.new_zeros(len(scores), 1)], 1)
        weights = torch.softmax(scores, 1)[:, :-1]
        return torch.bmm(weights.unsqueeze(1), events).squeeze(1), weights


class CausalTransformer(nn.Module):
    """SASRec-style (Kang & McAuley, ICDM 2018): events, oldest first, through causal
    self-attention; the state at the most recent event sums up the sequence. A start token
    that every position sees makes an empty history well defined."""

    def __init__(self, dim: int, length: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.start = nn.Parameter(torch.zeros(dim))
        self.position = nn.Parameter(torch.randn(length + 1, dim) * 1e-2)   # by recency slot
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.register_buffer("causal", torch.ones(length + 1, length + 1).triu(1).bool(), persistent=False)

    def forward(self, events: torch.Tensor, candidate: torch.Tensor, mask: torch.Tensor):
        # events [B, L, D], mask [B, L] -> state [B, D]; no per-event weights
        x = torch.cat([self.start.expand(len(events), 1, -1), events], 1) + self.position   # [B, L+1, D]
        padding = torch.cat([mask.new_zeros(len(mask), 1), ~mask], 1)
        return self.layers(x, mask=self.causal, src_key_padding_mask=padding)[:, -1], None


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
