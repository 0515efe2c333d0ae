"""What the benchmarks share: the protocol's model settings, task selection, loading the prepared
data, the library's own training step, and metrics flattened to one row by task name."""
from __future__ import annotations

import time

import torch

from polyrec.config import Config
from polyrec.data.dataset import PreparedData, prepare
from polyrec.data.sources import load_tables
from polyrec.models.network import model_for
from polyrec.objective import Objective
from polyrec.train.trainer import make_optimizer, seed_everything, train_step
from polyrec.weighting import build_weighting


def protocol_config(base: Config, name: str, max_epochs: int) -> Config:
    """``ARCH`` or ``ARCH_esmm`` on the protocol's inputs: IDs and categorical side features, no
    text and no ID dropout."""
    arch, _, suffix = name.partition("_")
    if suffix not in ("", "esmm"):
        raise SystemExit(f"unknown model '{name}': use ARCH or ARCH_esmm with ARCH in single/sharedbottom/mmoe/ple")
    return base.with_overrides([f"model.arch={arch}", f"model.esmm={suffix == 'esmm'}", "text=null",
                                "model.oov_dropout={}", f"train.max_epochs={max_epochs}", "train.progress=false"])


def select_tasks(config: Config, names: list[str]) -> Config:
    """The config with only the tasks ``names`` (in the config's order)."""
    raw = config.model_dump()
    unknown = set(names) - {t["name"] for t in raw["tasks"]}
    if unknown:
        raise SystemExit(f"--tasks: {sorted(unknown)} not in the config's tasks")
    raw["tasks"] = [t for t in raw["tasks"] if t["name"] in names]
    return Config.from_dict(raw)


def load_prepared(config: Config) -> PreparedData:
    return prepare(load_tables(config.data), config)


def flat_metrics(metrics: dict, config: Config, k: int = 10) -> dict[str, float]:
    """``evaluate()``'s nested metrics as one row: ``<task>_auc`` (binary tasks and joints),
    ``<task>_rmse`` (regression), ``<task>_recall@k`` / ``<task>_ndcg@k`` (ranking)."""
    objective = Objective.from_config(config)
    row = {}
    for name in objective.score_names:
        values = metrics.get(name, {})
        for metric in ("auc", "rmse"):
            if metric in values:
                row[f"{name}_{metric}"] = values[metric]
    for task, values in metrics.get("ranking", {}).items():
        row[f"{task}_recall@{k}"], row[f"{task}_ndcg@{k}"] = values[f"recall@{k}"], values[f"ndcg@{k}"]
    return row


def training_steps(cfg: Config, data: PreparedData, steps: int, warmup: int = 10) -> list[float]:
    """Seconds of each of ``steps`` training steps (the trainer's own step) after ``warmup`` steps."""
    seed_everything(cfg.train.seed, cfg.train.threads)
    model = model_for(cfg, data).train()
    objective, weighting = Objective.from_config(cfg), build_weighting(cfg.weighting, cfg.tasks)
    optimizer = make_optimizer(model, weighting, cfg.train)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    batch, times = cfg.train.batch_size, []
    for step in range(warmup + steps):
        idx = order[(step * batch) % (len(order) - batch):][:batch]
        start = time.perf_counter()
        train_step(model, objective, weighting, optimizer, data.train, idx)
        times.append(time.perf_counter() - start)
    return times[warmup:]
