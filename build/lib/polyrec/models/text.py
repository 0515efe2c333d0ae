"""Language-model text as a model input: the adaptor and the text block (LoRA encoder: polyrec/text/lora.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polyrec.config import TextSpec
from polyrec.models.layers import GroupedLinear


class TextAdaptor(nn.Module):
    """UniSRec's MoE adaptor (Hou et al., KDD 2022): K parametric whitenings (x - b_k)·W_k
    of a frozen sentence embedding, mixed by a softmax gate. [B, E] → [B, out_dim]."""

    def __init__(self, in_dim: int, out_dim: int, experts: int):
        super().__init__()
        self.whitenings = GroupedLinear(in_dim, out_dim, experts)  # (x - b)·W is x·W + (-b·W): a biased linear
        # Start at the scale of the ID embeddings (std 1e-2): unit-variance whitened text behind a
        # default-initialized layer would drown the IDs' signal for the first epochs.
        nn.init.normal_(self.whitenings.weight, std=1e-2 / in_dim ** 0.5)
        nn.init.zeros_(self.whitenings.bias)
        self.gate = nn.Linear(in_dim, experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = torch.softmax(self.gate(x), -1).unsqueeze(-1)  # [B, K, 1]
        return (gates * self.whitenings(x)).sum(1)             # [B, out]


class TextBlock(nn.Module):
    """Item text, user profile text and user history text → one input vector for the shared body.

    The item and the user's history (the mean text of the row's earlier items) go through the
    same adaptor, so their product and the raw cosine say "how close is this item to what the
    user watched": a concatenation of the two alone cannot express that to the layers above.
    """

    def __init__(self, spec: TextSpec):
        super().__init__()
        self.has_item, self.has_profile = bool(spec.item_template), bool(spec.user_template)
        self.has_history = bool(spec.user_history)
        make = lambda: TextAdaptor(spec.whiten_dim, spec.dim, spec.adaptor_experts)  # noqa: E731
        self.item_adaptor = make() if self.has_item else None
        self.profile_adaptor = make() if self.has_profile else None
        pair = self.has_item and self.has_history
        self.out_dim = spec.dim * (self.has_item + self.has_profile + self.has_history + pair) + pair

    def forward(self, item_text: torch.Tensor, profile_text: torch.Tensor,
                history_text: torch.Tensor | None = None) -> torch.Tensor:
        # item_text [B, E] (or [B, 0]); profile_text [B, E] (or [B, 0]); history_text [B, E]
        parts = []
        if self.has_item:
            item = self.item_adaptor(item_text)
            parts.append(item)
        if self.has_profile:
            parts.append(self.profile_adaptor(profile_text))
        if self.has_history:
            history = self.item_adaptor(history_text)
            parts += [history, item * history, F.cosine_similarity(item_text, history_text, eps=1e-6).unsqueeze(1)]
        return torch.cat(parts, 1)
