"""polyrec tune: a search on the validation split that writes the best config and every trial,
and refuses spaces that would change the rows or files it did not write."""
import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from polyrec.cli import app
from polyrec.config import Config
from polyrec.data.dataset import prepare
from polyrec.errors import ConfigError
from polyrec.tune import read_space, tune
from tests.conftest import BASE, make_config, make_tables

runner = CliRunner()


def read_space_text(text, folder=None):
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(folder or tmp) / "space.yaml"
        path.write_text(text)
        return read_space(path)


def project(tmp_path):
    tables = make_tables()
    for name, frame in (("events", tables.interactions), ("users", tables.users), ("items", tables.items)):
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    raw = {**BASE, "data": {**BASE["data"], "interactions": "events.csv", "users": "users.csv", "items": "items.csv"}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "cfg.yaml"


def test_tune_keeps_the_best_trial_by_validation(tmp_path):
    space_file = tmp_path / "space.yaml"
    space_file.write_text("train.lr: {low: 1.0e-4, high: 3.0e-2, log: true}\nhistory.length: {choices: [2, 5]}\n"
                          "model.n_experts: {low: 2, high: 4}\n")
    space = read_space(space_file)
    config = make_config()
    best, records = tune(config, space, trials=4, seed=1, tables=make_tables())
    done = [r for r in records if r["state"] == "complete"]
    top = max(done, key=lambda r: r["valid_mean_auc"])
    assert len(records) == 4 and set(top["params"]) == {"train.lr", "history.length", "model.n_experts"}
    assert best.train.lr == pytest.approx(top["params"]["train.lr"])
    assert best.history.length == top["params"]["history.length"] and isinstance(best.model.n_experts, int)
    assert 1e-4 <= best.train.lr <= 3e-2 and best.data == config.data


def test_tune_cli_writes_new_files_and_refuses_the_rows(tmp_path):
    config = project(tmp_path)
    (tmp_path / "space.yaml").write_text("model.dropout: {low: 0.0, high: 0.3}\n")
    out = tmp_path / "best.yaml"
    result = runner.invoke(app, ["tune", "-c", str(config), "--space", str(tmp_path / "space.yaml"), "--trials", "2",
                                 "-o", str(out)])
    assert result.exit_code == 0, result.output
    best = Config.from_yaml(out)
    trials = [json.loads(line) for line in (tmp_path / "best.yaml.trials.jsonl").read_text().splitlines()]
    assert len(trials) == 2 and best.model.dropout in [t["params"]["model.dropout"] for t in trials]
    again = runner.invoke(app, ["tune", "-c", str(config), "--space", str(tmp_path / "space.yaml"), "-o", str(out)])
    assert again.exit_code == 2 and "already exists" in again.stderr
    (tmp_path / "rows.yaml").write_text("data.seed: {choices: [1, 2]}\n")
    refused = runner.invoke(app, ["tune", "-c", str(config), "--space", str(tmp_path / "rows.yaml"),
                                  "-o", str(tmp_path / "other.yaml")])
    assert refused.exit_code == 2 and "data.seed" in refused.stderr and not (tmp_path / "other.yaml").exists()


@pytest.mark.parametrize("text,message", [("train.lr: {low: 1, high: 0.1}", "low < high"),
                                          ("train.lr: {low: 0.0, high: 0.1, log: true}", "low > 0"),
                                          ("train.lr: {low: 0.1}", "either low and high"),
                                          ("model.arch: []", "choices is empty")])
def test_bad_search_spaces_are_named(tmp_path, text, message):
    (tmp_path / "space.yaml").write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        read_space(tmp_path / "space.yaml")


def test_trials_that_change_the_statistics_train_on_rows_with_their_own(monkeypatch):
    """A trial's ``stats.*`` keys change what each row reads (its statistics at its own moment):
    every trial trains on rows prepared with its own settings, never on "now" statistics."""
    from polyrec.recommender import MultiTaskRecommender
    seen, fit = [], MultiTaskRecommender.fit_prepared

    def spy(self, data, *args, **kwargs):
        seen.append((self.config, data))
        return fit(self, data, *args, **kwargs)

    monkeypatch.setattr(MultiTaskRecommender, "fit_prepared", spy)
    space = {"stats.window": read_space_text("stats.window: {choices: [15, 40]}")["stats.window"]}
    tune(make_config(history="{}"), space, trials=3, seed=0, tables=make_tables())
    assert {cfg.stats.window for cfg, _ in seen} == {15, 40}
    for cfg, data in seen:
        expected = prepare(make_tables(), cfg).train.stats
        assert data.train.stats is not None and torch.equal(data.train.stats, expected)
