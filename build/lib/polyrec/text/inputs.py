"""Text inputs of a catalog: item text and user profile text, as embeddings (the user-history
text, the mean text of a row's earlier items, is read per row by the model from these item vectors).

Sentence embeddings are whitened (centred, rotated onto their principal axes, scaled to
unit variance, cut to ``whiten_dim``): anisotropic raw embeddings make every pair look
alike, and the smaller width keeps the per-row adaptor cheap (BERT-whitening, Su et al. 2021).
Every whitened vector is exactly ``whiten_dim`` wide (zero beyond the data's rank). Whitening is
affine, so the mean of whitened item vectors is the whitened mean of their embeddings.
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
    projection: np.ndarray  # [E, dim]

    @classmethod
    def fit(cls, x: np.ndarray, dim: int) -> Whitening:
        """Whitening to ``dim`` columns; beyond the rank of ``x`` (e.g. few distinct profiles) they are zero."""
        mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        k = min(dim, int((s > 1e-6 * s[0]).sum()) if len(s) and s[0] > 0 else 0)
        projection = np.zeros((x.shape[1], dim), np.float32)
        projection[:, :k] = vt[:k].T / (s[:k] / np.sqrt(max(len(x) - 1, 1)))
        return cls(mean.astype(np.float32), projection)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) @ self.projection).astype(np.float32)


@dataclass
class TextInputs:
    """Whitened text of the catalog plus what is needed to encode new items and users alike."""

    spec: TextSpec
    item: torch.Tensor                  # [n_items, whiten_dim] or [n_items, 0]
    user: torch.Tensor                  # [n_users, whiten_dim] (profile text) or [n_users, 0]
    item_whitening: Whitening | None
    profile_whitening: Whitening | None
    item_texts: list[str]               # rendered item templates (LoRA tokenizes them)

    def new_items(self, items: pd.DataFrame, encoder: TextEncoder) -> tuple[torch.Tensor, list[str]]:
        """Whitened text [n, whiten_dim] of new items (cold start) and their rendered texts."""
        texts = render(self.spec.item_template, items, "new item text")
        return torch.from_numpy(self.item_whitening(encoder.encode(texts))), texts

    def new_users(self, users: pd.DataFrame, encoder: TextEncoder) -> torch.Tensor:
        """Profile text [n, whiten_dim] (or [n, 0]) of new users."""
        if not self.spec.user_template:
            return torch.zeros(len(users), 0)
        return torch.from_numpy(self.profile_whitening(encoder.encode(render(self.spec.user_template, users,
                                                                             "new user text"))))

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, w in (("item", self.item_whitening), ("profile", self.profile_whitening)):
            if w is not None:
                out[f"{name}.mean"], out[f"{name}.projection"] = torch.from_numpy(w.mean), torch.from_numpy(
                    w.projection)
        return out

    @classmethod
    def restore(cls, spec: TextSpec, tensors: dict[str, torch.Tensor], item: torch.Tensor,
                user: torch.Tensor) -> TextInputs:
        """From :meth:`tensors` and the catalog's text embeddings (as a model's tables hold them)."""
        get = lambda n: Whitening(tensors[f"{n}.mean"].numpy(), tensors[f"{n}.projection"].numpy()) \
            if f"{n}.mean" in tensors else None  # noqa: E731
        return cls(spec, item, user, get("item"), get("profile"), [])


def encode_text(spec: TextSpec, users: pd.DataFrame, items: pd.DataFrame, progress: bool = True) -> TextInputs:
    """Text inputs in catalog order; whitening is fitted on these catalog rows."""
    encoder = TextEncoder(spec.model, spec.cache_dir, spec.batch_size, progress)
    item_w = profile_w = None
    item_text = np.zeros((len(items), 0), np.float32)
    user_text = np.zeros((len(users), 0), np.float32)
    texts = render(spec.item_template, items, "text.item_template") if spec.item_template else []
    if spec.item_template:
        raw_items = encoder.encode(texts)
        item_w = Whitening.fit(raw_items, spec.whiten_dim)
        item_text = item_w(raw_items)
    if spec.user_template:
        raw_profiles = encoder.encode(render(spec.user_template, users, "text.user_template"))
        profile_w = Whitening.fit(raw_profiles, spec.whiten_dim)
        user_text = profile_w(raw_profiles)
    return TextInputs(spec, torch.from_numpy(item_text), torch.from_numpy(user_text), item_w, profile_w, texts)
