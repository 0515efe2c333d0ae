"""The run-directory bundle: everything serving and evaluation need, written and read back.

Layout: ``model.safetensors`` (weights and encoded feature tables), ``config.json``,
``features.json`` (vocabularies and statistics), ``catalog.json`` (ids, titles),
``history.parquet`` (interactions excluded when recommending), ``eval/test/*.parquet`` (what
``evaluate`` rescores); with text, ``text.safetensors`` (the whitening new texts go through);
with histories or statistics, ``events.parquet`` (the train and valid periods' interactions with
their times: what rows given later read at their own moment).
Nothing is pickled. Where the folder goes and what else it holds (logs, metrics) is
:mod:`polyrec.rundir`'s and the pipeline's business.

Reading names the file for every fault. A run directory is data, not instructions: settings in
its ``config.json`` that choose where files are written (cache folders) are replaced by the
current process's own, and a language model it names by a local path is loaded only when the
caller names it too.
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from polyrec.config import Config
from polyrec.data.rows import Catalog, EvalData, history_pairs
from polyrec.data.features import FeatureEncoder
from polyrec.data.history import EventLog, PastEvents
from polyrec.errors import RunError
from polyrec.models.layers import FeatureTables
from polyrec.models.history import EventTable, StatsTable
from polyrec.models.network import MultiTaskModel, build_model
from polyrec.rundir import CORE_FILES
from polyrec.text.encoder import is_bundled
from polyrec.text.inputs import TextInputs

WEIGHTS = "model.safetensors"
TEXT_WEIGHTS = "text.safetensors"
HISTORY = "history.parquet"
EVENTS = "events.parquet"
TEST_SPLIT = Path("eval") / "test"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class Bundle:
    config: Config
    encoder: FeatureEncoder
    catalog: Catalog
    model: MultiTaskModel
    text: TextInputs | None
    history: dict[int, np.ndarray]   # train+valid items per user (catalog indices)
    test: EvalData | None            # None when a run directory has lost its eval/ folder
    past: PastEvents | None = None   # the known event log (with histories or statistics)


def write_bundle(folder: Path, bundle: Bundle) -> None:
    model = bundle.model
    frozen = model.frozen_keys()
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k not in frozen}, folder / WEIGHTS)
    if bundle.text is not None:
        save_file(bundle.text.tensors(), folder / TEXT_WEIGHTS)
    write_json(folder / "config.json", bundle.config.model_dump())
    write_json(folder / "features.json", bundle.encoder.to_json())
    write_json(folder / "catalog.json", bundle.catalog.to_json())
    users, items = history_pairs(bundle.history)
    pd.DataFrame({"user": users, "item": items}).to_parquet(folder / HISTORY)
    if bundle.test is not None:
        bundle.test.save(folder / TEST_SPLIT, [t.name for t in bundle.config.tasks])
    if bundle.past is not None:
        log = bundle.past.log
        frame = pd.DataFrame({"event": bundle.past.start + np.arange(len(log)), "user": log.user, "item": log.item,
                              "time": log.time})
        for k in range(log.feedback.shape[1]):
            frame[f"feedback:{k}"] = log.feedback[:, k]
        frame.to_parquet(folder / EVENTS)


def read_bundle(path: Path, text_model: str | None = None) -> Bundle:
    """The bundle in run directory ``path``; ``text_model`` replaces the language model it names."""
    path = check_bundle(Path(path))
    config = read_config(path, text_model)
    with reading(path / "features.json", "polyrec feature vocabularies"):
        encoder = FeatureEncoder.from_json(read_object(path / "features.json", "polyrec feature vocabularies",
                                                       ("specs", "vocab", "offsets", "num_embeddings")))
    raw = read_object(path / "catalog.json", "a polyrec catalog", ("user_ids", "item_ids", "titles"))
    with reading(path / "catalog.json", "a polyrec catalog"):
        catalog = Catalog(raw["user_ids"], raw["item_ids"], raw["titles"], raw.get("cold_item_ids", []))
    state = load_weights(path / WEIGHTS)
    whitening = None
    if config.text is not None:
        whitening = load_weights(path / TEXT_WEIGHTS)
        if config.text.mode == "lora" and text_model is None:
            check_model_source(config.text.model, path)
    try:
        text = None if whitening is None else TextInputs.restore(config.text, whitening, state["tables.item_text"],
                                                                 state["tables.user_text"])
        model = _model(config, encoder, state)
    except (KeyError, RuntimeError, ValueError, IndexError) as err:
        raise RunError(f"{path / WEIGHTS} does not match {path / 'config.json'} and features.json "
                       f"({str(err).splitlines()[0][:300]}); were they edited? Train the run again or restore "
                       "them") from None
    history = read_parquet(path / HISTORY)
    with reading(path / HISTORY, "the run's interaction history"):
        # copied: arrays read from parquet are read-only, and torch indexes with them
        history = {int(u): g["item"].to_numpy(copy=True) for u, g in history.groupby("user")}
    test = None
    if (path / TEST_SPLIT).exists():
        with reading(path / TEST_SPLIT, "the run's test split"):
            test = EvalData.load(path / TEST_SPLIT, [t.name for t in config.tasks])
    past = None
    if config.reads_events and (path / EVENTS).exists():
        events = read_parquet(path / EVENTS)
        with reading(path / EVENTS, "the run's event log"):
            feedback = events[[c for c in events if c.startswith("feedback:")]].to_numpy(np.float32)
            past = PastEvents(EventLog(*(events[c].to_numpy(copy=True) for c in ("user", "item", "time")), feedback),
                              int(events["event"].iloc[0]) if len(events) else 0)
    return Bundle(config, encoder, catalog, model, text, history, test, past)


def _model(config: Config, encoder: FeatureEncoder, state: dict[str, torch.Tensor]) -> MultiTaskModel:
    tables = FeatureTables.from_state(state, len(encoder.side_specs("user", "multi")))
    item_encoder = None
    if config.text is not None and config.text.mode == "lora":
        from polyrec.text.lora import LoraItemEncoder
        item_encoder = LoraItemEncoder.from_state(config.text, state)
    events = EventTable.from_state(state) if config.reads_history else None
    stats = StatsTable.from_state(state) if config.stats is not None else None
    model = build_model(config, encoder, tables, item_encoder, events, stats)
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = model.frozen_keys()
    if set(missing) - frozen or unexpected:
        raise KeyError(f"missing {sorted(set(missing) - frozen)[:5]}, unexpected {unexpected[:5]}")
    return model


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
