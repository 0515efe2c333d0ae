"""Text inputs of a catalog: item text, user profile text and user history text, as embeddings.

Sentence embeddings are whitened (centred, rotated onto their principal axes, scaled to
unit variance, cut to ``whiten_dim``): anisotropic raw embeddings make every pair look
alike, and the smaller width keeps the per-row adaptor cheap (BERT-whitening, Su et al. 2021).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from polyrec.config import TextSpec
from polyrec.text.encoder import TextEncoder
from polyrec.text.templates import render


@dataclass
class Whitening:
    mean: np.ndarray        # [E]
    projection: np.ndarray  # [E, k]

    @classmethod
    def fit(cls, x: np.ndarray, dim: int) -> Whitening:
        mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        k = min(dim, int((s > 1e-6 * s[0]).sum()))
        scale = s[:k] / np.sqrt(max(len(x) - 1, 1))
        return cls(mean.astype(np.float32), np.ascontiguousarray(vt[:k].T / scale, dtype=np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) @ self.projection).astype(np.float32)


@dataclass
class TextInputs:
    """Whitened text of the catalog plus what is needed to encode new items and users alike."""

    item: torch.Tensor                  # [n_items, k] or [n_items, 0]
    user: torch.Tensor                  # [n_users, k·(profile + history)]
    item_whitening: Whitening | None
    profile_whitening: Whitening | None
    item_texts: list[str]               # rendered item templates (LoRA tokenizes them)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, w in (("item", self.item_whitening), ("profile", self.profile_whitening)):
            if w is not None:
                out[f"{name}.mean"], out[f"{name}.projection"] = torch.from_numpy(w.mean), torch.from_numpy(
                    w.projection)
        return out

    @staticmethod
    def whitenings(tensors: dict[str, torch.Tensor]) -> tuple[Whitening | None, Whitening | None]:
        get = lambda n: Whitening(tensors[f"{n}.mean"].numpy(), tensors[f"{n}.projection"].numpy()) \
            if f"{n}.mean" in tensors else None  # noqa: E731
        return get("item"), get("profile")


def encode_text(spec: TextSpec, users: pd.DataFrame, items: pd.DataFrame, sequences: dict[int, np.ndarray],
                progress: bool = True) -> TextInputs:
    """Text inputs in catalog order; whitening is fitted on these catalog rows.

    User text is the profile embedding (``user_template``) followed by the mean embedding
    of the user's last ``user_history`` items in ``sequences`` (oldest first); a user with
    no history gets zeros there.
    """
    encoder = TextEncoder(spec.model, spec.cache_dir, spec.batch_size, progress)
    item_w = profile_w = None
    raw_items = item_text = np.zeros((len(items), 0), np.float32)
    texts = render(spec.item_template, items, "text.item_template") if spec.item_template else []
    if spec.item_template:
        raw_items = encoder.encode(texts)
        item_w = Whitening.fit(raw_items, spec.whiten_dim)
        item_text = item_w(raw_items)
    parts = []
    if spec.user_template:
        raw_profiles = encoder.encode(render(spec.user_template, users, "text.user_template"))
        profile_w = Whitening.fit(raw_profiles, spec.whiten_dim)
        parts.append(profile_w(raw_profiles))
    if spec.user_history:
        histories = [sequences.get(u, np.zeros(0, np.int64)) for u in range(len(users))]
        parts.append(history_text(raw_items, histories, spec.user_history, item_w))
    user_text = np.concatenate(parts, 1) if parts else np.zeros((len(users), 0), np.float32)
    return TextInputs(torch.from_numpy(item_text), torch.from_numpy(np.ascontiguousarray(user_text)), item_w,
                      profile_w, texts)


def history_text(raw_items: np.ndarray, histories: list[np.ndarray], last: int, whitening: Whitening) -> np.ndarray:
    """Whitened mean embedding of each history's ``last`` items; zeros for an empty history."""
    out = np.zeros((len(histories), whitening.projection.shape[1]), np.float32)
    for row, items in enumerate(histories):
        if len(items):
            out[row] = whitening(raw_items[items[-last:]].mean(0, keepdims=True))[0]
    return out
