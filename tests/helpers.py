"""Helpers more than one test module uses (fixtures live in conftest.py)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import polyrec.train.trainer as trainer
from polyrec.pipeline import resume_run, train_run
from polyrec.rundir import CHECKPOINT
from tests.conftest import BASE, make_config

ROOT = Path(__file__).resolve().parents[1]


def write_own_data(folder, tables):
    """``tables`` as the files a user brings (CSV and Parquet) and a config reading them; its path."""
    tables.interactions.to_csv(folder / "events.csv", index=False)
    tables.users.to_parquet(folder / "users.parquet")
    tables.items.to_csv(folder / "items.csv", index=False)
    raw = {**BASE, "data": {**BASE["data"], "interactions": str(folder / "events.csv"),
                            "users": str(folder / "users.parquet"), "items": str(folder / "items.csv")}}
    (folder / "cfg.yaml").write_text(yaml.safe_dump(raw))
    return folder / "cfg.yaml"


def snapshot(folder):
    """Every file and folder under ``folder`` with its content hash: equal snapshots, equal bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def torchrun(*args, cwd=ROOT, env=None):
    """``python -m torch.distributed.run`` with 2 processes on this machine (gloo on the CPU)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})})


# BatchNorm normalises each process's rows by their own statistics (SyncBatchNorm is GPU-only),
# so the comparison that must be exact runs without it; DWA's window is shortened so that it moves
def distributed_config(method: str):
    return make_config(weighting__method=method, model__batch_norm=False,
                       weighting__options="{window: 4}" if method == "dwa" else "{}")


def run_outcome(run):
    """What a finished run is: its test and validation metrics, every step's losses, its weights."""
    metrics = json.loads((run / "metrics.json").read_text())
    steps = [json.loads(line) for line in (run / "train_steps.jsonl").read_text().splitlines()]
    epochs = [json.loads(line)["valid"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    return metrics["test"], metrics["valid"], metrics["best_epoch"], steps, epochs, (run / "model.safetensors").read_bytes()


def stop_and_resume(config, root, monkeypatch, stop_at):
    """Train ``config`` whole, then again stopped before step ``stop_at`` and resumed: the same outcome."""
    train_run(config, root / "whole")
    calls, real = [], trainer.train_step

    def stop(*args):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(trainer, "train_step", stop)
    with pytest.raises(KeyboardInterrupt):
        train_run(config, root / "resumed")
    monkeypatch.setattr(trainer, "train_step", real)
    assert not (root / "resumed").exists()
    resume_run(root / "resumed")
    assert run_outcome(root / "resumed") == run_outcome(root / "whole")
    assert not list(root.glob(".resumed.partial-*")) and not (root / "resumed" / CHECKPOINT).exists()
