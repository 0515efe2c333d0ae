"""Every error clear: bad files, damaged run directories, bad requests, and what a run directory may cause."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from polyrec.cli import app
from polyrec.config import Config
from polyrec.data.dataset import prepare
from polyrec.data.sources import read_table
from polyrec.errors import ConfigError, DataError, RunError
from polyrec.recommender import MultiTaskRecommender
from tests.conftest import BASE, make_tables
from tests.helpers import write_own_data

runner = CliRunner()
README = Path(__file__).resolve().parent.parent / "README.md"


# ------------------------------------------------------------------ input files
def test_unreadable_files_are_named(tmp_path):
    good = make_tables().interactions
    good.to_parquet(tmp_path / "good.parquet")
    raw = (tmp_path / "good.parquet").read_bytes()
    (tmp_path / "truncated.parquet").write_bytes(raw[:len(raw) // 2])
    (tmp_path / "latin1.csv").write_bytes("user,item\nCafé,1\n".encode("latin-1"))
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3,4,5,6\n")
    cases = {"truncated.parquet": "cannot be read as parquet", "latin1.csv": "is not UTF-8 text",
             "binary.csv": "is a binary file, not CSV text", "empty.csv": "is empty: it needs a header row",
             "ragged.csv": "is not valid CSV"}
    for name, message in cases.items():
        with pytest.raises(DataError, match=f"interactions file {re.escape(str(tmp_path / name))} {message}"):
            read_table(tmp_path / name, "interactions")


def test_corrupt_parquet_page_is_named(tmp_path):
    frame = pd.DataFrame({"user": [f"u{i % 50}" for i in range(20_000)], "item": [f"i{i}" for i in range(20_000)]})
    frame.to_parquet(tmp_path / "x.parquet", compression="snappy")
    raw = bytearray((tmp_path / "x.parquet").read_bytes())
    raw[len(raw) // 3:len(raw) // 3 + 400] = b"\xff" * 400   # inside the compressed data pages
    (tmp_path / "x.parquet").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="x.parquet cannot be read as parquet"):
        read_table(tmp_path / "x.parquet", "interactions")


def test_yaml_errors_name_file_and_line(tmp_path):
    (tmp_path / "broken.yaml").write_text("data:\n  dataset: movielens-100k\n  split: {method: temporal\ntasks: []\n")
    with pytest.raises(ConfigError, match=r"broken.yaml is not valid YAML at line \d+, column \d+"):
        Config.from_yaml(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections .* found a list"):
        Config.from_yaml(tmp_path / "list.yaml")
    out = runner.invoke(app, ["train", "-c", str(tmp_path / "broken.yaml"), "-o", str(tmp_path / "run")])
    assert out.exit_code == 2 and "not valid YAML" in out.stderr and len(out.stderr.splitlines()) <= 2


def test_relative_data_paths_are_resolved_from_the_config_file(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    tables = make_tables()
    tables.interactions.to_csv(folder / "events.csv", index=False)
    tables.users.to_csv(folder / "users.csv", index=False)
    tables.items.to_csv(folder / "items.csv", index=False)
    raw = {**BASE, "data": {**BASE["data"], "interactions": "events.csv", "users": "users.csv", "items": "items.csv"}}
    (folder / "cfg.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)   # somewhere else
    config = Config.from_yaml(folder / "cfg.yaml")
    assert Path(config.data.interactions) == folder / "events.csv"
    assert len(prepare(read_all(config), config).catalog.user_ids) == 30
    # a --set override is typed at the shell: relative to the current folder
    assert Config.from_yaml(folder / "cfg.yaml", ["data.items=here.csv"]).data.items == "here.csv"


def read_all(config):
    from polyrec.data.sources import load_tables
    return load_tables(config.data)


# ------------------------------------------------------------------ labels and values
def test_child_positive_where_parent_is_zero_is_refused(config, tables):
    tables.interactions.loc[[4, 9], "click"] = 0.0
    tables.interactions.loc[[4, 9], "buy"] = 1.0
    with pytest.raises(DataError, match=r"label 'buy' \(task 'buy'\) is positive where its parent label 'click' "
                                        r"is 0, at rows 4, 9"):
        prepare(tables, config)


def test_infinite_and_non_numeric_values_name_their_rows(config, tables):
    bad = make_tables()
    bad.interactions.loc[[3, 8], "stars"] = np.inf
    with pytest.raises(DataError, match="regression label 'stars' is infinite at rows 3, 8"):
        prepare(bad, config)
    tables.items["price"] = tables.items["price"].astype(object)
    tables.items.loc[[2, 5], "price"] = "cheap"
    with pytest.raises(DataError, match="items table: numeric feature 'price' has non-numeric values 'cheap' at "
                                        "rows 2, 5"):
        prepare(tables, config)
    tables = make_tables()
    tables.users.loc[6, "age"] = -np.inf
    with pytest.raises(DataError, match="users table: numeric feature 'age' is infinite at rows 6"):
        prepare(tables, config)


# ------------------------------------------------------------------ run directories
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("errors")
    cfg = write_own_data(folder, make_tables())
    out = runner.invoke(app, ["train", "-c", str(cfg), "-o", str(folder / "run"), "--set", "train.max_epochs=1"])
    assert out.exit_code == 0, out.output
    return folder / "run"


@pytest.fixture
def damaged(run_dir, tmp_path):
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def test_truncated_weights_name_the_file(damaged):
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(RunError, match=f"{re.escape(str(weights))} cannot be read as safetensors weights"):
        MultiTaskRecommender.load(damaged)


@pytest.mark.parametrize("content, message", [
    ("not json at all {", "cannot be read as a polyrec config"),
    ("[1, 2, 3]", "is not a polyrec config: expected a JSON object"),
    ("{}", r"missing \['data', 'features', 'tasks'\]"),
])
def test_garbage_config_json_names_the_file(damaged, content, message):
    (damaged / "config.json").write_text(content)
    with pytest.raises(RunError, match=f"config.json.*{message}"):
        MultiTaskRecommender.load(damaged)


@pytest.mark.parametrize("edit", ["embed_dim", "tasks"])
def test_edited_config_json_is_reported_as_a_mismatch(damaged, edit):
    config = json.loads((damaged / "config.json").read_text())
    if edit == "embed_dim":
        config["model"]["embed_dim"] = 9
    else:
        config["tasks"] = config["tasks"][:1]
    (damaged / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match="model.safetensors does not match .*config.json and features.json"):
        MultiTaskRecommender.load(damaged)
    out = runner.invoke(app, ["evaluate", str(damaged)])
    assert out.exit_code == 2 and "does not match" in out.stderr and "Traceback" not in out.output


def test_missing_history_or_test_split(damaged):
    import shutil
    shutil.rmtree(damaged / "eval")
    rec = MultiTaskRecommender.load(damaged)   # recommending needs no test split
    assert len(rec.recommend("u1", k=3)) == 3
    out = runner.invoke(app, ["evaluate", str(damaged)])
    assert out.exit_code == 2 and "has no test split (eval/test is missing)" in out.stderr
    (damaged / "history.parquet").unlink()
    with pytest.raises(RunError, match="missing history.parquet"):
        MultiTaskRecommender.load(damaged)


def test_not_a_run_directory(tmp_path):
    out = runner.invoke(app, ["recommend", str(tmp_path), "--user", "1"])
    assert out.exit_code == 2 and "is not a complete polyrec run directory" in out.stderr


# ------------------------------------------------------------------ the command line
def test_errors_go_to_stderr_and_json_stdout_stays_clean(run_dir):
    out = runner.invoke(app, ["recommend", str(run_dir), "--user", "nobody", "--json"])
    assert out.exit_code == 2 and out.stdout == "" and "unknown user id 'nobody'" in out.stderr
    out = runner.invoke(app, ["recommend", str(run_dir), "--user", "u1", "--json", "-k", "2"])
    assert out.exit_code == 0 and len(json.loads(out.stdout)["items"]) == 2


def test_recommend_and_export_options_are_checked(run_dir):
    cases = [(["recommend", str(run_dir), "-u", "u1", "--fusion", "click"], "expected NAME=WEIGHT pairs"),
             (["recommend", str(run_dir), "-u", "u1", "--fusion", "colour=1"], "fusion: weights must name scores"),
             (["recommend", str(run_dir), "-u", "u1", "--filter", "tags"], "expected FIELD=VALUE"),
             (["recommend", str(run_dir), "-u", "u1", "--filter", "price=3"], "'price' is not a categorical"),
             (["export", str(run_dir)], "say what to export"),
             (["export", str(run_dir), "--ann"], "this run has no retrieval head")]
    for args, message in cases:
        out = runner.invoke(app, args)
        assert out.exit_code == 2 and message in out.stderr, (args, out.output)
    out = runner.invoke(app, ["recommend", str(run_dir), "-u", "u1", "--json", "-k", "3", "--fusion", "click=1,buy=1",
                              "--diversity", "0.5", "--filter", "tags=a"])
    assert out.exit_code == 0, out.output
    assert len(json.loads(out.stdout)["items"]) == 3


def test_new_user_payloads_are_validated_like_training_tables(run_dir):
    cases = [(["--new-user", '{"user": "n1", "age": "old"}'],
              "new users table: numeric feature 'age' has non-numeric values 'old' at rows 0"),
             (["--new-user", '{"user": "n1", "agee": 30}'], r"new users: unknown column\(s\) \['agee'\]"),
             (["--new-user", '{"age": 30}'], r"new users table: missing column\(s\) \['user'\]"),
             (["--new-user", '{"user": "u1"}'], r"already known: \['u1'\]"),
             (["--new-item", '{"item": "new", "price": "free"}', "--user", "u1"],
              "numeric feature 'price' has non-numeric values 'free'"),
             (["--user", "u1", "--new-user", '{"user": "n1"}'], "not both"),
             (["--new-user", "[1, 2]"], "expected a JSON object or a non-empty list of objects"),
             (["--new-user", "@missing.json"], "file not found: missing.json")]
    for args, message in cases:
        out = runner.invoke(app, ["recommend", str(run_dir), *args])
        assert out.exit_code == 2 and re.search(message, out.stderr), (args, out.output)
    out = runner.invoke(app, ["recommend", str(run_dir), "--new-user", '{"user": "n1", "age": 30, "country": "de"}',
                              "--json", "-k", "3"])
    assert out.exit_code == 0 and json.loads(out.stdout)["user_id"] == "n1"


def test_titles_with_brackets_are_shown_as_written(tmp_path):
    tables = make_tables()
    tables.items["name"] = [f"Item {i} [remastered]" if i % 2 else f"[/]Item {i}[bold]" for i in range(40)]
    cfg = write_own_data(tmp_path, tables)
    assert runner.invoke(app, ["train", "-c", str(cfg), "-o", str(tmp_path / "run"),
                               "--set", "train.max_epochs=1"]).exit_code == 0
    out = runner.invoke(app, ["recommend", str(tmp_path / "run"), "--user", "u3", "-k", "30"],
                        env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    assert "[remastered]" in out.stdout and "[/]Item" in out.stdout and "[bold]" in out.stdout


def test_evaluate_shows_progress_on_stderr(run_dir):
    out = runner.invoke(app, ["evaluate", str(run_dir), "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)["click"]["auc"] > 0
    assert "ranking the catalog" in out.stderr


# ------------------------------------------------------------------ docs
def test_readme_bring_your_own_data_config_is_valid():
    text = README.read_text()
    section = text[text.index("### Bring your own data"):]
    block = section[section.index("```yaml") + 7:section.index("```", section.index("```yaml") + 7)]
    config = Config.from_dict(yaml.safe_load(block))
    assert config.model.oov_dropout and {f.name for f in config.features} >= set(config.model.oov_dropout)


def test_shipped_configs_refer_to_files_that_exist():
    root = README.parent
    for path in (root / "configs").glob("*.yaml"):
        for name in re.findall(r"\b([A-Z]+\.md)\b", path.read_text()):
            assert (root / name).exists(), f"{path.name} refers to {name}"
