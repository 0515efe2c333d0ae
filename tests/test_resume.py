"""Crash-safe training: a run killed at any moment continues with `--resume` to exactly the
result it would have had, and a checkpoint is never half-written."""
import json
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from polyrec.cli import app
from polyrec.config import Config
from polyrec.errors import RunError
from polyrec.pipeline import resume_run, train_run
from polyrec.rundir import CHECKPOINT
from polyrec.train.checkpoint import load_checkpoint
from tests.conftest import make_tables
from tests.helpers import run_outcome, stop_and_resume, write_own_data

SETTINGS = ["train.max_epochs=4", "train.patience=10", "train.checkpoint_every=3"]


@pytest.fixture
def project(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    return tmp_path, write_own_data(data, make_tables())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The outcome of the run with SETTINGS that is never stopped (the data are the same files)."""
    root = tmp_path_factory.mktemp("whole")
    (root / "data").mkdir()
    cfg = write_own_data(root / "data", make_tables())
    train_run(Config.from_yaml(cfg, SETTINGS), root / "whole")
    return run_outcome(root / "whole")


def _polyrec(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "polyrec", *map(str, args)], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("method", ["static", "pcgrad", "dwa", "gradnorm"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(project, monkeypatch, method):
    """Stopped mid-epoch (step 17, after the checkpoint at step 15), in-process: the weighting
    method's state, the optimizer, the shuffle and dropout draws all continue as if never stopped."""
    root, cfg = project
    stop_and_resume(Config.from_yaml(cfg, [*SETTINGS, f"weighting.method={method}", "model.dropout=0.2"]), root,
                    monkeypatch, stop_at=17)


def test_a_killed_process_resumes_to_the_uninterrupted_result(project, uninterrupted):
    root, cfg = project
    sets = [arg for s in SETTINGS for arg in ("--set", s)]
    proc = _polyrec("train", "-c", cfg, "-o", root / "killed", *sets, cwd=root)
    deadline = time.time() + 120
    while time.time() < deadline and not list(root.glob(".killed.partial-*/" + CHECKPOINT)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (root / "killed").exists(), "the run finished before it was killed"
    resumed = _polyrec("train", "--resume", root / "killed", cwd=root)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert run_outcome(root / "killed") == uninterrupted


def test_a_checkpoint_is_never_half_written(project, uninterrupted):
    """The process dies in the middle of writing its third checkpoint: the second stays whole and
    the run resumes from it."""
    root, cfg = project
    script = f"""
import os, signal, sys, torch
import polyrec.train.checkpoint as checkpoint
real, calls = torch.save, []
def dying_save(obj, out):
    calls.append(1)
    if len(calls) == 3:
        out.write(b"half a checkpoint")
        out.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real(obj, out)
checkpoint.torch.save = dying_save
from polyrec.cli import app
sys.argv = ["polyrec", "train", "-c", {str(cfg)!r}, "-o", {str(root / "run")!r},
            *[a for s in {SETTINGS!r} for a in ("--set", s)]]
app()
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (staging,) = root.glob(".run.partial-*")
    assert load_checkpoint(staging / CHECKPOINT)["loop"]["step"] == 6   # the second, whole
    resume_run(root / "run")
    assert run_outcome(root / "run") == uninterrupted


def test_resume_errors_name_what_to_do(project, monkeypatch):
    root, cfg = project
    monkeypatch.chdir(root)
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--resume", "runs/none"])
    assert result.exit_code == 2 and "no unfinished run of runs/none" in result.stderr
    result = runner.invoke(app, ["train", "--resume", "runs/none", "--set", "train.lr=1"])
    assert result.exit_code == 2 and "leave out --config, --set and --out" in result.stderr
    staging = root / "runs" / ".broken.partial-1-abc"
    staging.mkdir(parents=True)
    (staging / "train_log.jsonl").write_text("")
    (staging / "config.json").write_text(Config.from_yaml(cfg).model_dump_json())
    (staging / CHECKPOINT).write_bytes(b"not a checkpoint")
    result = runner.invoke(app, ["train", "--resume", "runs/broken"])
    assert result.exit_code == 2 and "is not a readable polyrec checkpoint" in result.stderr, result.output
    assert not (root / "runs" / "broken").exists() and (staging / CHECKPOINT).exists()
    with pytest.raises(RunError, match="resume=True"):
        from polyrec.recommender import MultiTaskRecommender
        MultiTaskRecommender(Config.from_yaml(cfg)).fit(make_tables(), resume=True)


def test_a_training_log_is_replayed_epoch_by_epoch_whatever_each_epochs_steps(tmp_path):
    """Epochs can differ in steps (streamed rows, a trailing batch dropped): the replayed log keeps
    every step, and each epoch record follows its own last step."""
    from polyrec.train.log import TrainLog
    from polyrec.train.trainer import TrainResult
    records = [{"epoch": e, "steps": n, "valid": {"click": {"auc": 0.5 + e / 10}}, "train_loss": {}} for e, n in
               ((1, 3), (2, 4))]
    result = TrainResult(2, records[1]["valid"], 2, records, 1.0, [[float(s)] for s in range(7)],
                         [[1.0]] * 7)
    at, epoch = [], TrainLog.epoch

    def logged(self, record):
        at.append(self.steps)
        epoch(self, record)

    TrainLog.epoch = logged
    try:
        TrainLog.replay(tmp_path, ["click"], "static", result)
    finally:
        TrainLog.epoch = epoch
    steps = [json.loads(line) for line in (tmp_path / "train_steps.jsonl").read_text().splitlines()]
    assert [s["loss"]["click"] for s in steps] == [float(s) for s in range(7)] and at == [3, 7]
