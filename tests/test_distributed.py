"""torchrun data parallelism: 2 gloo processes, each on its share of every batch, take the steps
one process takes with the same global batch — for every weighting method, including those that
read per-task gradients."""
import json
import shutil

import numpy as np
import pytest

from polyrec.recommender import MultiTaskRecommender
from polyrec.weighting import WEIGHTINGS
from tests.conftest import make_tables
from tests.helpers import distributed_config, torchrun, write_own_data

METHODS = sorted(WEIGHTINGS)   # every registered method: a new one is covered without editing this file
SCRIPT = """
import json, sys
from polyrec.recommender import MultiTaskRecommender
from polyrec import distributed
from tests.conftest import make_tables
from tests.helpers import distributed_config
out = {}
for method in sys.argv[2].split(","):
    result = MultiTaskRecommender(distributed_config(method)).fit(make_tables()).result
    out[method] = {"losses": result.step_losses, "weights": result.step_weights, "valid": result.best_valid}
if distributed.rank() == 0:
    json.dump(out, open(sys.argv[1], "w"))
"""


def test_two_processes_take_the_steps_of_one_with_the_same_global_batch(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    done = torchrun(script, tmp_path / "out.json", ",".join(METHODS))
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "out.json").read_text())
    for method in METHODS:
        one = MultiTaskRecommender(distributed_config(method)).fit(make_tables()).result
        assert len(two[method]["losses"]) == len(one.step_losses) > 10, method
        np.testing.assert_allclose(two[method]["losses"], one.step_losses, rtol=1e-4, atol=1e-5, err_msg=method)
        np.testing.assert_allclose(two[method]["weights"], one.step_weights, rtol=1e-4, atol=1e-5, err_msg=method)
        assert two[method]["valid"]["click"]["auc"] == pytest.approx(one.best_valid["click"]["auc"], abs=1e-6), method


def test_torchrun_train_writes_one_run_from_the_first_process(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    cfg = write_own_data(data, make_tables())
    done = torchrun("-m", "polyrec", "train", "-c", cfg, "-o", tmp_path / "runs" / "two", "--set",
                    "train.max_epochs=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory: ") == 1
    metrics = json.loads((tmp_path / "runs" / "two" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and 0 <= metrics["test"]["click"]["auc"] <= 1
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["two"]
    shutil.rmtree(tmp_path / "runs")
    done = torchrun("-m", "polyrec", "train", "-c", cfg, "-o", tmp_path / "runs" / "sparse", "--set",
                    "train.sparse_embeddings=true", cwd=tmp_path)
    assert done.returncode != 0 and "does not support train.sparse_embeddings" in done.stderr
