"""Feature encoding: user/item table columns → index and value tensors for one embedding table.

Every categorical-like feature (categorical, multi, bucket) owns a slice of one global
embedding table; inside a slice index 0 is out-of-vocabulary and 1 is missing. That
makes the model's lookup a single gather, and new users or items (cold start) encode
with the same fitted vocabularies.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch

from polyrec.config import FeatureSpec
from polyrec.values import token

OOV, MISSING, FIRST = 0, 1, 2
PAD = -1


@dataclass
class EncodedSide:
    """Encoded rows of a user or item table (row order = catalog order)."""

    cat: torch.Tensor             # [n_rows, n_cat] int64, global embedding rows
    multi: list[torch.Tensor]     # per multi feature: [n_rows, max_len] int64, PAD-filled
    num: torch.Tensor             # [n_rows, n_num] float32, standardized
    text: torch.Tensor | None = None  # [n_rows, E·k] float32 language-model embeddings, when configured


class FeatureEncoder:
    """Fits vocabularies, bucket edges and numeric statistics on training rows; encodes any rows."""

    def __init__(self, specs: list[FeatureSpec]):
        self.specs = specs
        self.vocab: dict[str, dict[str, int]] = {}
        self.stats: dict[str, tuple[float, float]] = {}
        self.offsets: dict[str, int] = {}
        self.sizes: dict[str, int] = {}
        self.num_embeddings = 0

    def fit(self, users: pd.DataFrame, items: pd.DataFrame) -> FeatureEncoder:
        """``users``/``items``: the table rows seen in training."""
        for spec in self.specs:
            column = (users if spec.source == "user" else items)[spec.col]
            if spec.kind == "numeric":
                values = column.astype(float)
                std = float(values.std()) if values.notna().sum() > 1 else 0.0
                self.stats[spec.name] = (float(values.mean()) if values.notna().any() else 0.0, std or 1.0)
                continue
            if spec.kind == "bucket":
                size = len(spec.boundaries) + 1
            else:
                tokens = _tokens(column, spec) if spec.kind == "multi" else column.dropna().map(token)
                values = sorted(set(tokens))
                self.vocab[spec.name] = {v: FIRST + i for i, v in enumerate(values)}
                size = len(values)
            self.offsets[spec.name] = self.num_embeddings
            self.sizes[spec.name] = FIRST + size
            self.num_embeddings += FIRST + size
        return self

    def side_specs(self, source: str, kind: str) -> list[FeatureSpec]:
        kinds = ("categorical", "bucket") if kind == "cat" else (kind,)
        return [s for s in self.specs if s.source == source and s.kind in kinds]

    def oov_slots(self, probabilities: dict[str, float]) -> list[tuple[int, int, float]]:
        """(column in the model's categorical input, global OOV index, probability) per named feature."""
        columns = [s.name for s in self.side_specs("user", "cat") + self.side_specs("item", "cat")]
        return [(columns.index(name), self.offsets[name] + OOV, p) for name, p in probabilities.items()]

    def transform(self, df: pd.DataFrame, source: str) -> EncodedSide:
        n = len(df)
        cat = [self._encode_cat(df[s.col], s) + self.offsets[s.name] for s in self.side_specs(source, "cat")]
        multi = [self._encode_multi(df[s.col], s) for s in self.side_specs(source, "multi")]
        num = [self._encode_num(df[s.col], s) for s in self.side_specs(source, "numeric")]
        return EncodedSide(
            cat=torch.from_numpy(np.stack(cat, 1) if cat else np.zeros((n, 0), np.int64)),
            multi=[torch.from_numpy(m) for m in multi],
            num=torch.from_numpy(np.stack(num, 1) if num else np.zeros((n, 0), np.float32)),
        )

    def _encode_cat(self, column: pd.Series, spec: FeatureSpec) -> np.ndarray:
        if spec.kind == "bucket":
            values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
            idx = FIRST + np.searchsorted(np.asarray(spec.boundaries), values, side="right")
            return np.where(np.isnan(values), MISSING, idx).astype(np.int64)
        vocab = self.vocab[spec.name]
        idx = column.map(token).map(vocab).fillna(OOV).to_numpy(dtype=np.int64)
        return np.where(column.isna().to_numpy(), MISSING, idx)

    def _encode_multi(self, column: pd.Series, spec: FeatureSpec) -> np.ndarray:
        vocab, offset = self.vocab[spec.name], self.offsets[spec.name]
        rows = [[vocab.get(tok, OOV) for tok in tokens] or [MISSING] for tokens in map(partial(cell_tokens, spec=spec),
                                                                                       column)]
        out = np.full((len(rows), max(map(len, rows), default=1)), PAD, dtype=np.int64)
        for r, row in enumerate(rows):
            out[r, :len(row)] = np.asarray(row) + offset
        return out

    def _encode_num(self, column: pd.Series, spec: FeatureSpec) -> np.ndarray:
        mean, std = self.stats[spec.name]
        values = (pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64) - mean) / std
        return np.nan_to_num(values, nan=0.0).astype(np.float32)

    def extend(self, name: str, values: list[str]) -> list[int]:
        """New vocabulary entries for categorical feature ``name`` (e.g. items that arrived after
        training and earned their own ID embedding), given rows past the end of the table; returns
        their global indices."""
        vocab, offset = self.vocab[name], self.offsets[name]
        vocab.update({v: self.num_embeddings + k - offset for k, v in enumerate(values)})
        self.num_embeddings += len(values)
        return [offset + vocab[v] for v in values]

    def to_json(self) -> dict:
        return {"specs": [s.model_dump() for s in self.specs], "vocab": self.vocab, "stats": self.stats,
                "offsets": self.offsets, "sizes": self.sizes, "num_embeddings": self.num_embeddings}

    @classmethod
    def from_json(cls, data: dict) -> FeatureEncoder:
        enc = cls([FeatureSpec.model_validate(s) for s in data["specs"]])
        enc.vocab, enc.offsets, enc.sizes = data["vocab"], data["offsets"], data["sizes"]
        enc.stats = {k: tuple(v) for k, v in data["stats"].items()}
        enc.num_embeddings = data["num_embeddings"]
        return enc


def _tokens(column: pd.Series, spec: FeatureSpec) -> list[str]:
    return [tok for cell in column for tok in cell_tokens(cell, spec)]


def cell_tokens(cell, spec: FeatureSpec) -> list[str]:
    """The values of a multi-valued cell: a list (e.g. a Parquet list column) or text split by ``sep``."""
    if isinstance(cell, (list, tuple, np.ndarray)):
        return [token(v) for v in cell if not pd.isna(v) and str(v) != ""]
    if pd.api.types.is_scalar(cell) and pd.isna(cell):
        return []
    return [tok for tok in token(cell).split(spec.sep) if tok]
