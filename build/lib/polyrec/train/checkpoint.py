"""Crash-safe training: the whole training state in one file, replaced atomically.

A checkpoint holds the model, the optimizers, the weighting method's state, the random
number generators (the global one, which dropout draws from, and the one that shuffles the
epoch) and the loop's position and bookkeeping, so a resumed run takes exactly the steps
the uninterrupted one would have. It is written to a private file, flushed to disk and
renamed over the previous one: a crash at any moment leaves the previous checkpoint or the
new one, never a mix. Only tensors and plain values are stored (read with
``weights_only=True``).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from polyrec.errors import RunError


def save_checkpoint(path: Path, state: dict) -> None:
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(partial, "wb") as out:
            torch.save(state, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)   # the rename itself reaches the disk
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:   # torch reports a damaged file in many ways
        raise RunError(f"{path} is not a readable polyrec checkpoint ({type(err).__name__}); train the run "
                       "again without --resume") from None
