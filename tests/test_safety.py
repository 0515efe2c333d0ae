"""Nothing lost: what polyrec writes never replaces what it did not write, and concurrent or
killed runs leave one whole run (or evidence), never a mix."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from polyrec.cli import app
from polyrec.errors import RunError
from polyrec.recommender import MultiTaskRecommender
from polyrec.rundir import RunWriter, is_run
from tests.conftest import make_tables
from tests.helpers import snapshot, write_own_data

runner = CliRunner()


def train(cfg, out, *extra):
    return runner.invoke(app, ["train", "-c", str(cfg), "-o", str(out), "--set", "train.max_epochs=1", *extra])


@pytest.fixture
def project(tmp_path):
    """A user's folder: input data, an unrelated folder of runs-like files, and a config."""
    data = tmp_path / "data"
    data.mkdir()
    cfg = write_own_data(data, make_tables())
    runs = tmp_path / "runs"
    for name in ("a", "b"):
        (runs / name).mkdir(parents=True)
        (runs / name / "notes.txt").write_text(f"the user's own notes {name}")
    return tmp_path, cfg


@pytest.mark.parametrize("out", ["runs", "data", "data/cfg.yaml", "."])
def test_out_never_touches_a_path_polyrec_did_not_write(project, monkeypatch, out):
    root, cfg = project
    monkeypatch.chdir(root)
    before = snapshot(root)
    result = train(cfg, out)
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr and "Traceback" not in result.output and result.stdout == ""
    assert snapshot(root) == before
    result = train(cfg, out, "--overwrite")   # not even with --overwrite
    assert result.exit_code == 2 and snapshot(root) == before


def test_overwrite_replaces_an_earlier_run_only_when_asked(project):
    root, cfg = project
    run = root / "runs" / "mine"
    assert train(cfg, run).exit_code == 0 and is_run(run)
    first = snapshot(run)
    result = train(cfg, run, "--set", "train.seed=7")
    assert result.exit_code == 2 and "holds an earlier polyrec run; pass --overwrite" in result.stderr
    assert snapshot(run) == first
    assert train(cfg, run, "--set", "train.seed=7", "--overwrite").exit_code == 0
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 7
    assert not [p for p in run.parent.iterdir() if p.name.startswith(".mine")]   # no staging, lock or old run left
    (run / "my-analysis.ipynb").write_text("{}")   # the user adds a file: the folder is no longer polyrec's alone
    before = snapshot(root)
    result = train(cfg, run, "--overwrite")
    assert result.exit_code == 2 and "my-analysis.ipynb" in result.stderr and snapshot(root) == before


def test_save_refuses_like_the_cli(project):
    root, _ = project
    with pytest.raises(RunError, match=r"holds files that polyrec did not write \(notes.txt\)"):
        RunWriter(root / "runs" / "a")
    with pytest.raises(RunError, match="existing file"):
        RunWriter(root / "data" / "cfg.yaml")
    RunWriter(root / "runs" / "new")   # a new path is fine, and checking it creates nothing
    assert not (root / "runs" / "new").exists()


def test_a_second_writer_of_the_same_target_fails_at_once(project):
    root, cfg = project
    with RunWriter(root / "runs" / "busy"):
        start = time.perf_counter()
        result = train(cfg, root / "runs" / "busy")
        assert result.exit_code == 2 and time.perf_counter() - start < 10
        assert f"another polyrec process (pid {os.getpid()}) is writing" in result.stderr
    assert not (root / "runs" / "busy").exists()
    assert not list((root / "runs").glob(".busy*"))   # the lock file goes with the lock


def _polyrec(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "polyrec", *map(str, args)], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_concurrent_trainings_end_with_exactly_one_consistent_run(project):
    root, cfg = project
    run = root / "runs" / "shared"
    procs = [_polyrec("train", "-c", cfg, "-o", run, "--overwrite", "--set", f"train.seed={seed}",
                      "--set", "train.max_epochs=3", cwd=root) for seed in (11, 12)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert any(code == 0 for code, _ in results), results
    for code, err in results:
        assert code == 0 or (code == 2 and "is writing" in err), err
    seed = json.loads((run / "config.json").read_text())["train"]["seed"]
    assert seed in (11, 12)
    stored = json.loads((run / "metrics.json").read_text())["test"]
    again = MultiTaskRecommender.load(run).evaluate()
    assert again["click"]["auc"] == pytest.approx(stored["click"]["auc"], abs=1e-12)   # one run, not a mix
    assert not [p for p in run.parent.iterdir() if p.name.startswith(".shared")]


def test_a_killed_run_leaves_its_training_log_and_no_lock(project):
    root, cfg = project
    run = root / "runs" / "killed"
    proc = _polyrec("train", "-c", cfg, "-o", run, "--set", "train.max_epochs=500", "--set", "train.patience=500",
                    cwd=root)
    deadline = time.time() + 120
    logs = []
    while time.time() < deadline and not any(log.read_text().count("\n") >= 2 for log in logs):
        time.sleep(0.2)
        logs = list((root / "runs").glob(".killed.partial-*/train_log.jsonl"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert logs, "no training log appeared while training"
    epochs = [json.loads(line) for line in logs[0].read_text().splitlines() if line.endswith("}")]
    assert len(epochs) >= 2 and "valid" in epochs[0]
    steps = logs[0].with_name("train_steps.jsonl").read_text().splitlines()
    assert len(steps) >= len(epochs)
    assert not run.exists()
    with RunWriter(run):   # the dead writer's lock went with its process
        pass


def test_a_failed_training_keeps_its_log_as_evidence(project, monkeypatch):
    import polyrec.train.trainer as trainer
    root, cfg = project
    calls = []

    def evaluate_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt   # as if the user pressed Ctrl-C in the second epoch
        return real(*args, **kwargs)

    real = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", evaluate_then_fail)
    with pytest.raises(KeyboardInterrupt):
        from polyrec.config import Config
        from polyrec.pipeline import train_run
        train_run(Config.from_yaml(cfg, ["train.max_epochs=3"]), root / "runs" / "stopped")
    kept = list((root / "runs").glob(".stopped.partial-*"))
    assert len(kept) == 1 and len((kept[0] / "train_log.jsonl").read_text().splitlines()) == 1
    assert not (root / "runs" / "stopped").exists() and not list((root / "runs").glob(".stopped.lock"))
