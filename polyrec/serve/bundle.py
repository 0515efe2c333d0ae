"""Run-directory bundle: safetensors weights plus JSON/Parquet; written atomically.

Layout: ``model.safetensors``, ``config.json``, ``features.json`` (vocabularies and
statistics), ``catalog.json`` (ids, titles), ``history.parquet`` (interactions
excluded when recommending), ``eval/test/*.parquet`` (what ``evaluate`` rescores),
``metrics.json`` and ``train_log.jsonl``; with text, ``text.safetensors`` (whitening of new texts).
Nothing is pickled.
"""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

WEIGHTS = "model.safetensors"


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")


def read_json(path: Path):
    return json.loads(path.read_text())


@contextmanager
def staged_dir(target: Path):
    """Yield a staging folder that replaces ``target`` only if the block completes."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def check_bundle(path: Path) -> Path:
    path = Path(path)
    missing = [n for n in (WEIGHTS, "config.json", "features.json", "catalog.json") if not (path / n).exists()]
    if missing:
        raise FileNotFoundError(f"{path} is not a polyrec run directory (missing {', '.join(missing)}); "
                                "create one with `polyrec train`")
    return path
