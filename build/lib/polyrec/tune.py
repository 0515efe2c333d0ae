"""Hyperparameter search on the validation split: Optuna's TPE sampler, trials pruned epoch by
epoch against the median of earlier trials, every trial logged, the best config written out.

A search space is a YAML mapping from config keys to ranges or choices::

    train.lr: {low: 3.0e-4, high: 3.0e-3, log: true}
    model.dropout: {low: 0.0, high: 0.4}
    history.length: {choices: [10, 20, 50]}

The rows and the split stay fixed (``data.*`` cannot be searched), so every trial is scored on
the same validation rows, and the test split is never read. What a row reads besides its pair
(its history span, its statistics at its own moment) is prepared for each trial's settings:
a trial that changes ``stats.*`` reads statistics computed with them, never today's.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from polyrec.config import Config, read_yaml
from polyrec.data.dataset import PreparedData, prepare
from polyrec.data.sources import load_tables
from polyrec.data.tables import Tables
from polyrec.errors import ConfigError


class Range(BaseModel):
    """``low``..``high`` (integers when both are; ``log`` for a log scale), or ``choices``."""

    model_config = ConfigDict(extra="forbid")
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    choices: list | None = None

    @model_validator(mode="after")
    def _check(self) -> Range:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either low and high, or choices")
        if self.choices is not None and not self.choices:
            raise ValueError("choices is empty")
        if self.low is not None and (self.low >= self.high or (self.log and self.low <= 0)):
            raise ValueError(f"needs low < high{' and low > 0 (log scale)' if self.log else ''}")
        return self

    def suggest(self, trial, key: str):
        if self.choices is not None:
            return trial.suggest_categorical(key, self.choices)
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(key, self.low, self.high, log=self.log)


def read_space(path: str | Path) -> dict[str, Range]:
    raw = read_yaml(path)
    if not raw:
        raise ConfigError(f"search space {path} is empty; map config keys to ranges, e.g. "
                          "'train.lr: {low: 3.0e-4, high: 3.0e-3, log: true}'")
    space = {}
    for key, value in raw.items():
        if str(key).split(".")[0] == "data":
            raise ConfigError(f"search space {path}: '{key}' changes the rows or the split; every trial must be "
                              "scored on the same validation rows, so data.* cannot be searched")
        try:
            space[str(key)] = Range.model_validate(value if isinstance(value, dict) else {"choices": value})
        except ValidationError as err:
            message = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
            raise ConfigError(f"search space {path}: '{key}': {message}") from None
    return space


def tune(config: Config, space: dict[str, Range], trials: int, seed: int = 0,
         tables: Tables | None = None) -> tuple[Config, list[dict]]:
    """The best config found in ``trials`` trials (by the best epoch's validation mean AUC) and
    every trial's record (number, state, value, params); ``tables``: the data (default: the
    config's). Each trial trains on rows prepared for what it reads (:func:`rows_settings`)."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("polyrec tune needs Optuna: pip install 'polyrec[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tables = tables if tables is not None else load_tables(config.data)
    prepared: dict[str, PreparedData] = {}

    def rows_for(trial_config: Config) -> PreparedData:
        key = rows_settings(trial_config)
        if key not in prepared:
            prepared[key] = prepare(tables, trial_config)
        return prepared[key]

    quiet = config.with_overrides(["train.progress=false"])

    def objective(trial) -> float:
        overrides = [f"{key}={json.dumps(r.suggest(trial, key))}" for key, r in space.items()]
        try:
            trial_config = quiet.with_overrides(overrides)
        except ConfigError as err:   # a combination the config refuses (e.g. heads not dividing embed_dim)
            trial.set_user_attr("error", str(err))
            raise optuna.TrialPruned() from None

        def report(record: dict) -> None:
            trial.report(record["valid_mean_auc"], record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned()

        from polyrec.recommender import MultiTaskRecommender
        result = MultiTaskRecommender(trial_config).fit_prepared(rows_for(trial_config), on_epoch=report).result
        return result.history[result.best_epoch - 1]["valid_mean_auc"]

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
    records = []

    def log(study, trial) -> None:
        value = trial.value if trial.value is not None and math.isfinite(trial.value) else None
        records.append({"number": trial.number, "state": trial.state.name.lower(), "valid_mean_auc": value,
                        "params": trial.params, **trial.user_attrs})
        print(json.dumps(records[-1]), flush=True)

    study.optimize(objective, n_trials=trials, callbacks=[log])
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise ConfigError(f"no trial of {trials} completed (all pruned or refused); widen the space or add trials")
    best = config.with_overrides([f"{k}={json.dumps(v)}" for k, v in study.best_trial.params.items()])
    return best, records


def rows_settings(config: Config) -> str:
    """What the prepared rows depend on beyond the (fixed) data section: whether they carry their
    history spans, and the statistics each row reads at its own moment (``stats.*``)."""
    return json.dumps({"history": config.reads_history,
                       "stats": config.stats.model_dump() if config.stats is not None else None})


def config_yaml(config: Config, note: str) -> str:
    return f"# {note}\n" + yaml.safe_dump(config.model_dump(), sort_keys=False)
