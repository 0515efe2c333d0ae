"""End to end on the real MovieLens-100K and through the CLI."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from polyrec.cli import app
from polyrec.errors import DataError
from polyrec.recommender import MultiTaskRecommender
from tests.conftest import make_tables
from tests.helpers import write_own_data

runner = CliRunner()


def test_movielens_loader(ml100k):
    inter, users, items = ml100k.interactions, ml100k.users, ml100k.items
    assert len(inter) == 100_000 and len(users) == 943 and len(items) == 1682
    assert inter.groupby("user_id").size().min() >= 20
    assert set(inter["rating"].unique()) == {1, 2, 3, 4, 5}
    assert inter["like"].mean() == pytest.approx((inter["rating"] >= 4).mean())
    toy = items.set_index("item_id").loc["1"]
    assert (toy["title"], toy["year"], toy["genres"], toy["genre"]) == ("Toy Story", 1995,
                                                                        "Animation|Children's|Comedy", "Animation")


@pytest.fixture(scope="module")
def trained(ml100k, ml_config, tmp_path_factory):
    cfg = ml_config.with_overrides(["train.max_epochs=2"])
    rec = MultiTaskRecommender(cfg).fit(ml100k)
    metrics = rec.evaluate()
    run = tmp_path_factory.mktemp("runs") / "ml"
    rec.save(run, {"test": metrics})
    return rec, metrics, run


def test_short_training_on_movielens_learns_every_task(trained):
    _, m, _ = trained
    assert m["watch"]["auc"] > 0.80 and m["like"]["auc"] > 0.72 and m["ctcvr"]["auc"] > 0.82
    assert m["rating"]["rmse"] < 1.05  # predicting the mean gives about 1.13
    assert m["watch"]["rows"] == 5 * m["like"]["rows"]  # 4 sampled negatives per test interaction
    assert m["ranking"]["watch"]["users"] == 943
    assert 0.05 < m["ranking"]["watch"]["ndcg@10"] < 0.5


def test_save_load_gives_identical_predictions_and_metrics(trained):
    rec, metrics, run = trained
    loaded = MultiTaskRecommender.load(run)
    users, items = ["1", "42", "500"], ["50", "1", "1682"]
    assert loaded.predict(users, items).equals(rec.predict(users, items))
    again = loaded.evaluate()
    assert again["watch"]["auc"] == metrics["watch"]["auc"]
    assert again["ranking"]["like"] == metrics["ranking"]["like"]


def test_recommend_excludes_history_and_reports_every_task(trained):
    rec, _, _ = trained
    items = rec.recommend("42", k=10)
    assert [r["rank"] for r in items] == list(range(1, 11))
    seen = {rec.catalog.item_ids[i] for i in rec.history[rec.catalog.user_index["42"]]}
    assert not seen & {r["item_id"] for r in items}
    assert all(set(r) >= {"item_id", "title", "watch", "like", "rating", "ctcvr", "score"} for r in items)
    scores = [r["score"] for r in items]
    assert scores == sorted(scores, reverse=True) and scores == [r["ctcvr"] for r in items]
    with pytest.raises(DataError, match="unknown user id '100000'"):
        rec.recommend("100000")


def test_cli_evaluate_and_recommend_from_bundle(trained):
    _, metrics, run = trained
    out = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["watch"]["auc"] == pytest.approx(metrics["watch"]["auc"])
    out = runner.invoke(app, ["recommend", str(run), "--user", "42", "-k", "5", "--json"])
    assert out.exit_code == 0, out.output
    assert len(json.loads(out.stdout)["items"]) == 5
    out = runner.invoke(app, ["recommend", str(run), "--user", "nobody"])
    assert out.exit_code == 2 and "unknown user id 'nobody'" in out.output


def test_cli_train_on_own_csv_and_parquet_files(tmp_path):
    cfg = write_own_data(tmp_path, make_tables())
    run = tmp_path / "run"
    out = runner.invoke(app, ["train", "--config", str(cfg), "--set", "model.arch=ple", "--out", str(run)])
    assert out.exit_code == 0, out.output
    assert {"model.safetensors", "config.json", "features.json", "catalog.json", "metrics.json",
            "train_log.jsonl"} <= {p.name for p in run.iterdir()}
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert len(log) >= 1 and set(log[0]["train_loss"]) == {"click", "buy", "stars"}
    out = runner.invoke(app, ["recommend", str(run), "--user", "u3", "-k", "3"])
    assert out.exit_code == 0 and "Item" in out.output


def test_cli_bad_data_fails_cleanly_and_writes_nothing(tmp_path):
    tables = make_tables()
    tables.interactions = tables.interactions.drop(columns=["stars"])
    cfg = write_own_data(tmp_path, tables)
    run = tmp_path / "run"
    out = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(run)])
    assert out.exit_code == 2
    assert "missing column(s) ['stars']" in out.output and "Traceback" not in out.output
    assert not run.exists() and not list(tmp_path.glob(".run*"))


def test_training_is_reproducible():
    from tests.conftest import make_config
    cfg = make_config(train__max_epochs=1)
    a = MultiTaskRecommender(cfg).fit(make_tables()).predict(["u1", "u2"], ["i1", "i2"])
    b = MultiTaskRecommender(cfg).fit(make_tables()).predict(["u1", "u2"], ["i1", "i2"])
    assert np.array_equal(a["click"].to_numpy(), b["click"].to_numpy())
