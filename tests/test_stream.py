"""Streaming training rows from Parquet (data.streaming): the same rows, vocabularies and checks as
in memory, a bounded shuffle, negatives drawn on the fly, and one process or several."""
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from polyrec.config import Config
from polyrec.data.dataset import prepare
from polyrec.data.sources import load_tables
from polyrec.data.synthetic import SYNTHETIC_CONFIG, synthetic_tables, write_synthetic_split
from polyrec.data.tables import Tables
from polyrec.errors import DataError
from polyrec.recommender import MultiTaskRecommender
from tests.conftest import make_config, make_tables
from tests.helpers import stop_and_resume, torchrun


def write_split(folder, tables=None, row_group_size=40):
    """``tables`` (make_tables()) with each user's last row as test and the one before as valid; the
    training rows as a folder of two Parquet files (several row groups each). Returns the rows with
    a split column."""
    tables = tables or make_tables()
    inter = tables.interactions.sort_values(["user", "ts"], kind="stable").reset_index(drop=True)
    last = inter.groupby("user").cumcount(ascending=False)
    inter["split"] = np.select([last == 0, last == 1], ["test", "valid"], "train")
    train = inter[inter["split"] == "train"].drop(columns="split")
    (folder / "train").mkdir()
    half = len(train) // 2
    for k, part in enumerate((train[:half], train[half:])):
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), folder / "train" / f"part-{k}.parquet",
                       row_group_size=row_group_size)
    for name in ("valid", "test"):
        inter[inter["split"] == name].drop(columns="split").to_parquet(folder / f"{name}.parquet", index=False)
    tables.users.to_parquet(folder / "users.parquet", index=False)
    tables.items.to_parquet(folder / "items.parquet", index=False)
    return Tables(inter, tables.users, tables.items)


def stream_config(folder, **changes) -> Config:
    files = {f"data__{name}": folder / (name if name == "train" else f"{name}.parquet")
             for name in ("train", "valid", "test", "users", "items")}
    return make_config(**{"data__interactions": "null", "data__streaming": "true", "eval__ranking": "false",
                          **files, **changes})


def memory_config(**changes) -> Config:
    return make_config(data__split__method="column", eval__ranking="false", **changes)


def epoch(data, batch_size=64, seed=0, start=0):
    return list(data.train.batches(batch_size, torch.Generator().manual_seed(seed), start))


def rows_of(batches):
    return (torch.cat([b.user for b, _ in batches]), torch.cat([b.item for b, _ in batches]),
            torch.cat([b.labels for b, _ in batches]))


def test_unshuffled_stream_is_the_in_memory_training_rows_in_file_order(tmp_path):
    tables = write_split(tmp_path)
    streamed = prepare(load_tables(stream_config(tmp_path).data), stream_config(
        tmp_path, data__shuffle_buffer=0, data__negatives__per_positive=0))
    memory = prepare(tables, memory_config(data__negatives__per_positive=0))
    user, item, labels = rows_of(epoch(streamed, batch_size=50))
    assert len(user) == len(memory.train) == len(streamed.train) == 240
    assert torch.equal(user, memory.train.user) and torch.equal(item, memory.train.item)
    torch.testing.assert_close(labels, memory.train.labels, equal_nan=True)
    # the same vocabularies and encoded tables: fitted on the same training users and items
    for side in ("users", "items"):
        a, b = getattr(streamed, side), getattr(memory, side)
        assert torch.equal(a.cat, b.cat) and torch.equal(a.num, b.num)
        assert all(torch.equal(x, y) for x, y in zip(a.multi, b.multi))
    assert np.allclose(streamed.train.label_means(), memory.train.label_means(), equal_nan=True)


def test_shuffled_stream_sees_every_row_once_per_epoch_and_replays_from_its_generator(tmp_path):
    write_split(tmp_path)
    cfg = stream_config(tmp_path, data__shuffle_buffer=64, data__negatives__per_positive=0)
    data = prepare(load_tables(cfg.data), cfg)
    plain = prepare(load_tables(cfg.data), cfg.with_overrides(["data.shuffle_buffer=0"]))
    key = lambda u, i, y: sorted(zip(u.tolist(), i.tolist(), y.nan_to_num(-1).tolist()))  # noqa: E731
    first, again, other = epoch(data), epoch(data), epoch(data, seed=1)
    assert key(*rows_of(first)) == key(*rows_of(epoch(plain)))
    assert not torch.equal(rows_of(first)[0], rows_of(epoch(plain))[0])          # shuffled
    assert not torch.equal(rows_of(first)[0], rows_of(other)[0])                 # by the generator
    assert all(torch.equal(a.user, b.user) for (a, _), (b, _) in zip(first, again))
    tail = epoch(data, start=2)                                                  # a resumed epoch
    assert len(tail) == len(first) - 2 and torch.equal(tail[0][0].item, first[2][0].item)
    assert [len(b) for b, _ in first] == [64, 64, 64, 48]


def test_negatives_are_drawn_on_the_fly_away_from_known_interactions(tmp_path):
    tables = write_split(tmp_path)
    cfg = stream_config(tmp_path, data__negatives__per_positive=3)
    data = prepare(load_tables(cfg.data), cfg)
    user, item, labels = rows_of(epoch(data))
    negative = labels[:, 0] == 0
    assert len(data.train) == len(user) == 4 * 240 and int(negative.sum()) == 3 * 240
    assert torch.isnan(labels[negative, 1:]).all()   # a negative has no buy or stars
    inter = tables.interactions
    known = set(zip(inter["user"].map(data.catalog.user_index), inter["item"].map(data.catalog.item_index)))
    # every row group is read whole here, so a user's training interactions there are avoided; the
    # rest of them may be drawn (they are not in memory), and so may the later valid and test ones
    # (training does not know them: as in memory, avoiding them would favour them)
    later = set(zip(inter.loc[inter["split"] != "train", "user"].map(data.catalog.user_index),
                    inter.loc[inter["split"] != "train", "item"].map(data.catalog.item_index)))
    pairs = set(zip(user[negative].tolist(), item[negative].tolist()))
    assert pairs & later
    assert len(pairs & (known - later)) < 0.05 * len(pairs)
    assert not torch.equal(rows_of(epoch(data, seed=1))[1], item)   # new draws each epoch


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.drop(columns="buy"), "missing column(s) ['buy']"),
    (lambda f: f.assign(click=f["click"].where(f.index != 7, np.nan)), "is NaN at rows 7"),
    (lambda f: f.assign(user=f["user"].where(f.index != 3, "stranger")), "missing from the users table"),
])
def test_bad_training_rows_are_named_by_file_column_and_row(tmp_path, damage, message):
    write_split(tmp_path)
    path = tmp_path / "train" / "part-1.parquet"
    frame = pd.read_parquet(path)
    damage(frame).to_parquet(path, index=False)
    cfg = stream_config(tmp_path)
    with pytest.raises(DataError) as err:
        prepare(load_tables(cfg.data), cfg)
    assert message in str(err.value) and ("part-1.parquet" in str(err.value) or "stranger" in str(err.value))


def test_corrupt_parquet_and_settings_that_need_every_row_are_refused(tmp_path):
    write_split(tmp_path)
    (tmp_path / "train" / "part-1.parquet").write_bytes(b"PAR1 not really")
    cfg = stream_config(tmp_path)
    with pytest.raises(DataError, match="cannot be read as Parquet"):
        prepare(load_tables(cfg.data), cfg)
    with pytest.raises(ValueError, match="data.streaming keeps no training row in memory.*eval.ranking"):
        stream_config(tmp_path, eval__ranking="true")
    with pytest.raises(ValueError, match="Parquet"):
        make_config(data__interactions="null", data__streaming="true", data__train="rows.csv",
                    data__valid="v.csv", data__test="t.csv", eval__ranking="false")


def test_streamed_training_reaches_the_quality_of_training_in_memory(tmp_path):
    tables = write_split(tmp_path, synthetic_tables(1500, 300, 30_000, n_topics=10, seed=3), row_group_size=5000)
    raw = {**SYNTHETIC_CONFIG, "train": {**SYNTHETIC_CONFIG["train"], "max_epochs": 2, "batch_size": 1024}}
    files = {name: str(tmp_path / (name if name == "train" else f"{name}.parquet"))
             for name in ("train", "valid", "test", "users", "items")}
    streamed = Config.from_dict({**raw, "data": {**raw["data"], "interactions": None, **files, "streaming": True}})
    memory = Config.from_dict({**raw, "data": {**raw["data"], "split": {"method": "column"}}})
    auc = {}
    for name, cfg, given in (("streamed", streamed, None), ("memory", memory, tables)):
        rec = MultiTaskRecommender(cfg).fit(given)
        assert rec.result.epochs == 2 and rec.result.train_samples_per_s > 0
        auc[name] = rec.evaluate()["click"]["auc"]
    assert auc["streamed"] > 0.75 and abs(auc["streamed"] - auc["memory"]) < 0.02, auc


COUNT_ROWS = """
import json, sys
from polyrec import distributed
from polyrec.config import Config
from polyrec.objective import Objective
from polyrec.pipeline import train_run
trained, losses = [], Objective.batch_losses
def counted(self, model, data, idx):
    trained.append(len(idx))
    return losses(self, model, data, idx)
Objective.batch_losses = counted
train_run(Config.from_yaml(sys.argv[1]), sys.argv[2])
json.dump(trained, open(f"{sys.argv[3]}/rank{distributed.rank()}.json", "w"))
"""


def test_two_processes_each_read_their_own_row_groups_and_train_on_all_of_them(tmp_path):
    (tmp_path / "data").mkdir()
    write_split(tmp_path / "data")   # 6 row groups of 40 training rows, 3 negatives per positive
    cfg = stream_config(tmp_path / "data", train__max_epochs=2, train__patience=5, data__negatives__per_positive=3)
    path, script = tmp_path / "stream.yaml", tmp_path / "count.py"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    script.write_text(COUNT_ROWS)
    done = torchrun(script, path, tmp_path / "runs" / "two", tmp_path, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "two" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and 0 <= metrics["test"]["click"]["auc"] <= 1
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # each process trains on its own 3 row groups, whole: 480 rows an epoch, in 15 steps of 32
    assert [sum(steps) for steps in per_rank] == [2 * 480, 2 * 480] and per_rank[0] == per_rank[1] == [32] * 30


def test_synthetic_split_is_written_a_file_at_a_time_and_streams(tmp_path):
    paths = write_synthetic_split(tmp_path, 300, 200, 5000, 400, n_topics=10, rows_per_file=2000)
    assert [f.name for f in sorted(paths["train"].iterdir())] == [f"part-0000{k}.parquet" for k in range(3)]
    rows = pd.read_parquet(paths["train"])
    assert len(rows) == 5000 and (rows["purchase"] <= rows["like"]).all()   # a purchase follows a like
    # the rating follows the like: liked items are rated higher
    assert rows.loc[rows["like"] == 1, "stars"].mean() > rows.loc[rows["like"] == 0, "stars"].mean() + 0.3
    raw = {**SYNTHETIC_CONFIG, "data": {**SYNTHETIC_CONFIG["data"], "interactions": None, "streaming": True,
                                        **{k: str(v) for k, v in paths.items()}}}
    data = prepare(load_tables(Config.from_dict(raw).data), Config.from_dict(raw))
    assert len(data.train) == 5 * 5000 and len(data.catalog.item_ids) == 200


def test_an_interrupted_streamed_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    """Stopped mid-epoch after a checkpoint: the resumed epoch reads the same row groups, shuffle
    and negatives from the saved generator state, skipping the batches already trained on."""
    (tmp_path / "data").mkdir()
    write_split(tmp_path / "data")
    config = stream_config(tmp_path / "data", data__shuffle_buffer=64, train__max_epochs=3, train__patience=10,
                           train__checkpoint_every=3, train__batch_size=32)
    stop_and_resume(config, tmp_path, monkeypatch, stop_at=14)   # epoch 2 of 8 steps, after the step-12 checkpoint
