"""Run-directory bundle: reading its files back, with an error that names the file for each fault.

Layout (written by :meth:`MultiTaskRecommender.write_bundle`, placed by :mod:`polyrec.rundir`):
``model.safetensors``, ``config.json``, ``features.json`` (vocabularies and statistics),
``catalog.json`` (ids, titles), ``history.parquet`` (interactions excluded when
recommending), ``eval/test/*.parquet`` (what ``evaluate`` rescores), ``metrics.json``,
``train_log.jsonl``; with text, ``text.safetensors`` (whitening of new texts). Nothing is pickled.

A run directory is data, not instructions: settings in its ``config.json`` that choose where
files are written (cache folders) are replaced by the current process's own, and a language
model given there as a local path is loaded only when the caller names it too.
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from pydantic import ValidationError

from polyrec.config import Config
from polyrec.errors import RunError
from polyrec.rundir import CORE_FILES
from polyrec.text.encoder import is_bundled

WEIGHTS = "model.safetensors"
TEXT_WEIGHTS = "text.safetensors"
HISTORY = "history.parquet"
TEST_SPLIT = Path("eval") / "test"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")


@contextmanager
def reading(path: Path, what: str = "a file polyrec wrote"):
    """Turn any failure to read or interpret ``path`` into a :class:`RunError` naming it."""
    if not path.exists():
        raise RunError(f"{path} is missing: the run directory is incomplete; train it again "
                       "(polyrec train) or restore the file")
    try:
        yield
    except RunError:
        raise
    except Exception as err:   # corrupt, truncated or edited: whatever the parser says, name the file
        raise RunError(f"{path} cannot be read as {what} ({type(err).__name__}: {str(err)[:200]}); it was "
                       "truncated or edited: train the run again or restore the file") from None


def read_json(path: Path, what: str = "JSON"):
    with reading(path, what):
        return json.loads(path.read_text())


def read_object(path: Path, what: str, keys: tuple[str, ...]) -> dict:
    """A JSON object with at least ``keys``."""
    data = read_json(path, what)
    missing = [k for k in keys if k not in data] if isinstance(data, dict) else list(keys)
    if missing:
        raise RunError(f"{path} is not {what}: expected a JSON object with {list(keys)}, missing {missing}; "
                       "train the run again or restore the file")
    return data


def load_weights(path: Path) -> dict:
    from safetensors.torch import load_file
    with reading(path, "safetensors weights"):
        return load_file(path)


def read_parquet(path: Path) -> pd.DataFrame:
    with reading(path, "Parquet"):
        return pd.read_parquet(path)


def check_bundle(path: Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} is not a folder; give a run directory written by `polyrec train`")
    missing = [n for n in (*CORE_FILES, HISTORY) if not (path / n).exists()]
    if missing:
        raise RunError(f"{path} is not a complete polyrec run directory (missing {', '.join(missing)}); "
                       "create one with `polyrec train`")
    return path


def read_config(path: Path, text_model: str | None = None) -> Config:
    """The run's config, with the file locations that a run folder may not choose reset to the
    current process's own; ``text_model`` replaces the language model the run names."""
    file = path / "config.json"
    raw = read_object(file, "a polyrec config", ("data", "features", "tasks"))
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        lines = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:5])
        raise RunError(f"{file} is not a valid polyrec config ({lines}); train the run again") from None
    text = config.text
    if text is not None:
        text = text.model_copy(update={"cache_dir": None, "model": text_model or text.model})
    return config.model_copy(update={"data": config.data.model_copy(update={"cache_dir": None}), "text": text})


def check_model_source(name: str, run: Path) -> None:
    """Refuse to load a language model that a run directory names by a local path: which files
    are loaded is the caller's decision (the bundled default and hub names, read from the local
    Hugging Face cache without remote code, are fine)."""
    if not (is_bundled(name) or (_HUB_NAME.match(name) and not Path(name).exists())):
        raise RunError(f"{run / 'config.json'} names the language model {name!r}, a local path; a run directory "
                       "may not choose which files are loaded: pass text_model=... (CLI: --text-model) with that "
                       "path if you trust it")
