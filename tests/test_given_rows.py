"""Your data, your protocol: given splits and rows, scoring and evaluating any file, named cold
items, list cells, datasets without items, and the reference rows of ml100k-mt."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from polyrec.cli import app
from polyrec.config import Config
from polyrec.data.dataset import prepare
from polyrec.data.features import OOV
from polyrec.data.tables import Tables
from polyrec.errors import ConfigError, DataError
from polyrec.recommender import MultiTaskRecommender
from tests.conftest import BASE, make_config, make_tables

runner = CliRunner()
ORACLE = Path(__file__).resolve().parents[2] / "shared" / "protocols" / "ml100k_mt.py"


def given_rows(seed=0):
    """make_tables' interactions with a split column and pre-drawn negatives (some pairs repeat)."""
    tables = make_tables()
    rng = np.random.default_rng(seed)
    inter = tables.interactions.assign(split=rng.choice(["train"] * 6 + ["valid", "test"], len(tables.interactions)))
    negatives = inter.sample(150, random_state=seed, replace=True).assign(
        item=lambda d: rng.choice([f"i{i}" for i in range(40)], len(d)), click=0.0, buy=0.0, stars=np.nan)
    return Tables(pd.concat([inter, negatives], ignore_index=True), tables.users, tables.items)


def given_config(*extra):
    return make_config(data__split__method="column", data__negatives__per_positive=0).with_overrides(
        ["train.max_epochs=2", *extra])


def test_given_split_takes_the_rows_as_they_are():
    tables, cfg = given_rows(), given_config()
    data = prepare(tables, cfg)
    inter = tables.interactions
    for name, samples in (("train", data.train), ("valid", data.valid.samples), ("test", data.test.samples)):
        assert len(samples) == (inter["split"] == name).sum()   # no row added, none dropped
    test = inter[inter["split"] == "test"]
    assert len(data.test.interactions) == (test["click"] == 1).sum()   # the negatives are not interactions
    pairs = list(zip(data.train.user.tolist(), data.train.item.tolist()))
    assert len(pairs) > len(set(pairs))   # repeated pairs kept
    assert np.isnan(data.train.labels[:, 1][data.train.labels[:, 0] == 0].numpy()).all()   # no buy without a click
    # vocabularies come from the train rows only: an item that only test rows show is out of vocabulary
    only_test = set(test["item"]) - set(inter.loc[inter["split"] != "test", "item"])
    column = [s.name for s in data.encoder.side_specs("item", "cat")].index("item")
    for item in only_test:
        assert data.items.cat[data.catalog.item_index[item], column] == data.encoder.offsets["item"] + OOV


def test_split_as_three_files_equals_a_split_column(tmp_path):
    tables = given_rows()
    inter = tables.interactions
    for name in ("train", "valid", "test"):
        inter[inter["split"] == name].drop(columns="split").to_parquet(tmp_path / f"{name}.parquet")
    tables.users.to_csv(tmp_path / "users.csv", index=False)
    tables.items.to_csv(tmp_path / "items.csv", index=False)
    raw = {**BASE, "data": {**{k: v for k, v in BASE["data"].items() if k != "interactions"},
                            "train": "train.parquet", "valid": "valid.parquet", "test": "test.parquet",
                            "users": "users.csv", "items": "items.csv", "negatives": {"per_positive": 0}}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    from polyrec.data.sources import load_tables
    config = Config.from_yaml(tmp_path / "cfg.yaml")
    assert config.data.split.method == "column"
    from_files = prepare(load_tables(config.data), config)
    reordered = pd.concat([inter[inter["split"] == n] for n in ("train", "valid", "test")], ignore_index=True)
    from_column = prepare(Tables(reordered, tables.users, tables.items), given_config())
    for a, b in ((from_files.train, from_column.train), (from_files.test.samples, from_column.test.samples)):
        assert a.user.equal(b.user) and a.item.equal(b.item) and np.array_equal(a.labels, b.labels, equal_nan=True)
    inter[inter["split"] == "valid"].drop(columns=["split", "stars"]).to_parquet(tmp_path / "valid.parquet")
    with pytest.raises(DataError, match="valid rows file .*valid.parquet has columns .* give the files"):
        load_tables(config.data)


def test_given_split_errors_name_what_is_wrong():
    tables = given_rows()
    tables.interactions.loc[[3, 9], "split"] = "validation"
    with pytest.raises(DataError, match="split column 'split' must hold train, valid or test; found 'validation' "
                                        "at rows 3, 9"):
        prepare(tables, given_config())
    tables = given_rows()
    tables.interactions["split"] = tables.interactions["split"].replace("valid", "train")
    with pytest.raises(DataError, match="the valid split is empty"):
        prepare(tables, given_config())
    with pytest.raises(DataError, match="missing column\\(s\\) \\['split'\\]"):
        prepare(make_tables(), given_config())
    with pytest.raises(ConfigError, match="exactly one of"):
        make_config(data__train="a.csv")   # interactions and files at once


def test_duplicate_pairs_stay_an_error_in_a_derived_split():
    tables = given_rows()
    with pytest.raises(DataError, match="duplicate \\(user, item\\) pairs"):
        prepare(Tables(tables.interactions.drop(columns="split"), tables.users, tables.items), make_config())


@pytest.fixture(scope="module")
def given_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("given")
    tables = given_rows()
    tables.interactions.to_parquet(folder / "rows.parquet")
    tables.users.to_parquet(folder / "users.parquet")
    tables.items.to_parquet(folder / "items.parquet")
    raw = given_config().model_dump()
    raw["data"].update(interactions="rows.parquet", users="users.parquet", items="items.parquet")
    (folder / "cfg.yaml").write_text(yaml.safe_dump(raw))
    out = runner.invoke(app, ["train", "-c", str(folder / "cfg.yaml"), "-o", str(folder / "run")])
    assert out.exit_code == 0, out.output
    test = tables.interactions[tables.interactions["split"] == "test"].drop(columns="split")
    test.to_csv(folder / "test.csv", index=False)
    return folder, test


def test_evaluate_given_rows_equals_the_runs_own_test_split(given_run):
    folder, _ = given_run
    own = json.loads(runner.invoke(app, ["evaluate", str(folder / "run"), "--json"]).stdout)
    out = runner.invoke(app, ["evaluate", str(folder / "run"), "--data", str(folder / "test.csv"), "--json"])
    assert out.exit_code == 0, out.output
    given = json.loads(out.stdout)
    for task in ("click", "buy", "stars"):
        assert given[task] == pytest.approx(own[task])
    for task in ("click", "buy"):   # full catalog, the run's exclusions
        assert given["ranking"][task] == pytest.approx(own["ranking"][task])


def test_predict_scores_a_file_and_never_replaces_one(given_run):
    folder, test = given_run
    out = runner.invoke(app, ["predict", str(folder / "run"), "--data", str(folder / "test.csv"),
                              "-o", str(folder / "scores.parquet")])
    assert out.exit_code == 0, out.output
    scores = pd.read_parquet(folder / "scores.parquet")
    assert len(scores) == len(test) and {"click_score", "buy_score", "stars_score", "click&buy_score"} <= set(scores)
    rec = MultiTaskRecommender.load(folder / "run")
    expected = rec.predict(test["user"].tolist(), test["item"].tolist())["click"].to_numpy()
    assert np.allclose(scores["click_score"], expected)
    before = (folder / "scores.parquet").read_bytes()
    again = runner.invoke(app, ["predict", str(folder / "run"), "--data", str(folder / "test.csv"),
                                "-o", str(folder / "scores.parquet")])
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert (folder / "scores.parquet").read_bytes() == before


def test_scoring_and_evaluating_bad_files(given_run, tmp_path):
    folder, test = given_run
    test.drop(columns=["buy"]).to_csv(tmp_path / "no_buy.csv", index=False)
    out = runner.invoke(app, ["evaluate", str(folder / "run"), "--data", str(tmp_path / "no_buy.csv")])
    assert out.exit_code == 2 and "missing label column(s) ['buy']" in out.stderr
    test.assign(user="stranger").to_csv(tmp_path / "strangers.csv", index=False)
    out = runner.invoke(app, ["predict", str(folder / "run"), "--data", str(tmp_path / "strangers.csv"),
                              "-o", str(tmp_path / "s.parquet")])
    assert out.exit_code == 2 and "names" in out.stderr and "users the run does not know" in out.stderr
    assert not (tmp_path / "s.parquet").exists() and not list(tmp_path.glob(".s.parquet*"))
    (tmp_path / "rows.json").write_text("{}")
    out = runner.invoke(app, ["predict", str(folder / "run"), "--data", str(tmp_path / "rows.json"),
                              "-o", str(tmp_path / "s.parquet")])
    assert out.exit_code == 2 and "unsupported format '.json'" in out.stderr


@pytest.mark.parametrize("as_file", [False, True])
def test_named_cold_items_leave_train_and_valid_entirely(tmp_path, as_file):
    names = ["i3", "i17", "i22"]
    value = str(tmp_path / "cold.txt") if as_file else "[i3, i17, i22]"
    if as_file:
        (tmp_path / "cold.txt").write_text("\n".join(names) + "\n")
    cfg = make_config(data__cold_items=value, train__max_epochs=1)
    data = prepare(make_tables(), cfg)
    cold = [data.catalog.item_index[n] for n in names]
    assert sorted(data.cold_items.tolist()) == sorted(cold) and data.catalog.cold_item_ids == sorted(
        names, key=lambda n: data.catalog.item_index[n])
    for samples in (data.train, data.valid.samples):   # sampled negatives included
        assert not np.isin(samples.item.numpy(), cold).any()
    metrics = MultiTaskRecommender(cfg).fit(make_tables()).evaluate()
    assert metrics["cold_items"]["click"]["rows"] == int(np.isin(data.test.samples.item.numpy(), cold).sum())
    with pytest.raises(DataError, match=r"names 1 item id\(s\) that are not in the catalog: \['nope'\]"):
        prepare(make_tables(), make_config(data__cold_items="[i3, nope]"))


def test_list_cells_in_multi_features_and_templates(tmp_path):
    from polyrec.text.templates import render
    tables = make_tables()
    tables.items["tags"] = [t.split("|") if isinstance(t, str) else None for t in tables.items["tags"]]
    tables.items.to_parquet(tmp_path / "items.parquet")
    tables.items = pd.read_parquet(tmp_path / "items.parquet")   # numpy arrays in the cells, as Parquet gives them
    data = prepare(tables, make_config())
    expected = prepare(make_tables(), make_config())   # the same tags as "a|b" text
    assert data.encoder.vocab["tags"] == expected.encoder.vocab["tags"]
    assert all(a.equal(b) for a, b in zip(data.items.multi, expected.items.multi))
    assert render("{name}: {tags}", tables.items.head(3), "t")[0] == f"Item 0: {', '.join(tables.items['tags'][0])}"
    tables.items["tags"] = tables.items["tags"].astype(object)
    tables.items.at[5, "tags"] = {"a": 1}
    with pytest.raises(DataError, match="items table: column 'tags' must hold a single value or a list of single "
                                        "values per cell; row 5 holds dict"):
        prepare(tables, make_config())
    tables = make_tables()
    tables.users["country"] = tables.users["country"].astype(object)
    tables.users.at[2, "country"] = ["de", "fr"]
    with pytest.raises(DataError, match="users table: column 'country' must hold a single value per cell; row 2"):
        prepare(tables, make_config())


def tabular(n=600, seed=0):
    rng = np.random.default_rng(seed)
    people = pd.DataFrame({"person": [f"p{i}" for i in range(n)], "age": rng.integers(18, 80, n),
                           "job": rng.choice(["a", "b", "c"], n)})
    signal = (people["age"] - 50) / 20 + (people["job"] == "a")
    people["income"] = (signal + rng.normal(0, 1, n) > 0).astype(float)
    people["married"] = (0.5 * signal + rng.normal(0, 1, n) > 0).astype(float)
    return people


TABULAR = {"data": {"interactions": "people.csv", "user_col": "person", "item_col": None, "time_col": None,
                    "split": {"method": "random"}, "negatives": {"per_positive": 0}},
           "features": [{"name": "age", "source": "user", "kind": "numeric"}, {"name": "job", "source": "user"}],
           "tasks": [{"name": "income", "kind": "binary"}, {"name": "married", "kind": "binary"}],
           "model": {"embed_dim": 4, "expert_dims": [16], "tower_dims": [8]},
           "train": {"max_epochs": 10, "progress": False, "batch_size": 64}}


@pytest.mark.parametrize("arch", ["single", "sharedbottom", "mmoe", "ple"])
def test_a_dataset_without_items_trains_every_architecture(arch):
    people = tabular()
    tables = Tables(people[["person", "income", "married"]], people[["person", "age", "job"]])
    for method in (["static", "uncertainty"] + (["multibalance", "pcgrad"] if arch != "single" else [])):
        cfg = Config.from_dict({**TABULAR, "model": {**TABULAR["model"], "arch": arch},
                                "weighting": {"method": method}})
        rec = MultiTaskRecommender(cfg).fit(tables)
        metrics = rec.evaluate()
        assert metrics["income"]["auc"] > 0.6 and "ranking" not in metrics, (arch, method)
        assert metrics["notes"]["ranking"].startswith("the dataset has no items")
        assert "gauc" not in metrics["income"] and "income.gauc" in metrics["notes"]
    with pytest.raises(DataError, match="nothing to recommend"):
        rec.recommend("p1")
    assert len(rec.predict_rows(people.head(5)[["person"]])) == 5


def test_a_dataset_without_items_through_the_cli(tmp_path):
    tabular().to_csv(tmp_path / "people.csv", index=False)
    raw = {**TABULAR, "data": {**TABULAR["data"], "users": "people.csv"}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    out = runner.invoke(app, ["train", "-c", str(tmp_path / "cfg.yaml"), "-o", str(tmp_path / "run")],
                        env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "note: ranking left out: the dataset has no items" in out.stdout
    assert "note: income.gauc left out: no user has both a positive and a negative label" in out.stdout
    with pytest.raises(ConfigError, match="nothing to sample negatives from"):
        Config.from_dict({**TABULAR, "data": {**TABULAR["data"], "negatives": {"per_positive": 4}}})
    with pytest.raises(ConfigError, match="remove the item features"):
        Config.from_dict({**TABULAR, "features": [*TABULAR["features"], {"name": "brand", "source": "item"}]})


@pytest.mark.slow
def test_built_in_protocol_rows_are_the_reference_rows():
    from polyrec.data.ml100k_mt import REFERENCE_SHA256, content_sha256, load_ml100k_mt, rows_sha256
    tables = load_ml100k_mt()
    assert rows_sha256(tables) == REFERENCE_SHA256
    inter = tables.interactions
    assert inter.groupby("split").size().to_dict() == {"train": 399630, "valid": 50185, "test": 50185}
    assert inter.duplicated(["user_id", "item_id", "split"]).any()   # negatives drawn with replacement
    if ORACLE.exists():   # the project's specification and oracle, when the shared folder is there
        spec = importlib.util.spec_from_file_location("ml100k_mt_oracle", ORACLE)
        oracle = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(oracle)
        assert REFERENCE_SHA256 == oracle.EXPECTED
        for split in ("train", "valid", "test"):
            rows = inter[inter["split"] == split].reset_index(drop=True)
            assert oracle.content_hash(rows) == content_sha256(rows) == oracle.EXPECTED[split]
    config = Config.from_yaml(Path(__file__).resolve().parent.parent / "configs" / "ml100k_mt.yaml")
    data = prepare(tables, config)
    assert len(data.train) == 399630 and len(data.test.interactions) == 10037
    assert data.test.samples.labels[:, 0].sum() == 10037   # the given negatives are in the rows, none added


def _rows_of(samples, data, tables):
    """The interactions among ``samples`` as a file gives them: ids, labels and their time."""
    positive = samples.labels[:, 0] == 1
    rows = pd.DataFrame({"user": [data.catalog.user_ids[u] for u in samples.user[positive]],
                         "item": [data.catalog.item_ids[i] for i in samples.item[positive]]})
    inter = tables.interactions.set_index(["user", "item"])
    return rows.join(inter, on=["user", "item"]), positive


def test_given_rows_read_the_history_of_their_own_time():
    """Rows scored from a file read what was known at each row's time, as the run's own rows did:
    given training-period rows see neither their own nor later interactions."""
    cfg = make_config(history="{}", train__max_epochs=1)
    tables = make_tables()
    rec = MultiTaskRecommender(cfg).fit(tables)
    data = prepare(tables, cfg)
    rows, positive = _rows_of(data.train, data, tables)
    from polyrec.evaluate.evaluator import predict_logits
    own = predict_logits(rec.model, data.train.user[positive], data.train.item[positive],
                         data.train.context(positive))
    np.testing.assert_allclose(rec.predict_rows(rows)["click_score"], torch.sigmoid(own[:, 0]), atol=1e-6)


def test_given_rows_with_statistics_score_as_the_runs_own_test_rows(tmp_path):
    cfg = make_config(history="{}", stats="{}", train__max_epochs=1)
    tables = make_tables()
    MultiTaskRecommender(cfg).fit(tables).save(tmp_path / "run")
    rec = MultiTaskRecommender.load(tmp_path / "run")
    data = prepare(tables, cfg)
    rows, _ = _rows_of(data.test.samples, data, tables)
    given, own = rec.evaluate(rows, ranking=False), rec.evaluate(ranking=False)
    assert given["stars"] == pytest.approx(own["stars"], abs=1e-6)   # the test interactions' ratings
    with pytest.raises(DataError, match="time column 'ts'"):
        rec.predict_rows(rows.drop(columns="ts"))
    with pytest.raises(DataError, match="time column 'ts'"):
        rec.evaluate(rows.drop(columns="ts"))
