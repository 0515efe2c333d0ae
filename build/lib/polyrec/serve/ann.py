"""Approximate nearest-neighbour search over the retrieval head's item vectors: an HNSW graph
(faiss), by inner product of unit vectors (cosine). Measured on 1,000,000 item vectors
(``benchmarks/serve.py --compare-libraries``): hnswlib builds and searches a little faster and
usearch recalls a little less; faiss is within 0.4 ms p99 of the fastest, well inside the
budget, and unlike hnswlib (last released 2023, compiled from source here) it installs from
maintained wheels."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from polyrec.errors import RunError, optional_import

ANN_FILE = "items.faiss"


class ItemIndex:
    """Items' unit vectors [n, d] in an HNSW graph (``m`` links per node); ``add`` appends items
    (they get the next catalog indices), ``search`` returns the nearest catalog indices."""

    def __init__(self, vectors: torch.Tensor, m: int = 32, ef_construction: int = 80, ef_search: int = 256):
        self.faiss = optional_import("faiss", "ann")
        self.index = self.faiss.IndexHNSWFlat(vectors.shape[1], m, self.faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.hnsw.efSearch = ef_search
        self.add(vectors)

    @classmethod
    def load(cls, path: Path, vectors: torch.Tensor, ef_search: int = 256) -> ItemIndex | None:
        """The index saved at ``path`` (:meth:`save`), if it holds ``vectors`` (the first items'
        current vectors, [m, d]) as its first items; None when it is unreadable or stale."""
        self = cls.__new__(cls)
        self.faiss = optional_import("faiss", "ann")
        try:
            self.index = self.faiss.read_index(str(path))
            saved = self.index.reconstruct_n(0, min(len(vectors), self.index.ntotal))
        except RuntimeError:   # faiss reports unreadable files this way
            return None
        if self.index.ntotal < len(vectors) or not np.allclose(saved, vectors.numpy(), atol=1e-5):
            return None
        self.index.hnsw.efSearch = ef_search
        return self

    def save(self, path: Path, overwrite: bool = False) -> Path:
        """Write the index to ``path`` (a partial file renamed into place); an existing file is
        replaced only with ``overwrite``, and only when it is a faiss index itself."""
        if path.exists():
            try:
                readable = overwrite and self.faiss.read_index(str(path)) is not None
            except RuntimeError:   # faiss reports unreadable files this way
                readable = False
            if not readable:
                raise RunError(f"{path} already exists; polyrec replaces only an item index it wrote, with "
                               "--overwrite" if overwrite else f"{path} already exists; pass --overwrite to replace "
                               "an earlier export")
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            self.faiss.write_index(self.index, str(partial))
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return path

    def __len__(self) -> int:
        return self.index.ntotal

    def add(self, vectors: torch.Tensor) -> None:
        self.index.add(np.ascontiguousarray(vectors.numpy(), dtype=np.float32))

    def search(self, queries: torch.Tensor, n: int) -> torch.Tensor:
        """The ``n`` nearest items per query [Q, d] → [Q, n] catalog indices, nearest first (−1 pads
        when the index holds fewer)."""
        params = self.faiss.SearchParametersHNSW(efSearch=max(self.index.hnsw.efSearch, n))
        _, found = self.index.search(np.ascontiguousarray(queries.numpy(), dtype=np.float32), n, params=params)
        return torch.from_numpy(found)
