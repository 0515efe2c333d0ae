"""Bad input is rejected before training with a message naming the table, column and rows."""
import numpy as np
import pandas as pd
import pytest

from polyrec.config import Config, ConfigError
from polyrec.data.dataset import prepare
from polyrec.data.sources import read_table
from polyrec.data.tables import Tables
from polyrec.errors import DataError
from tests.conftest import BASE, make_config, make_tables


def test_valid_synthetic_data_prepares(config, tables):
    data = prepare(tables, config)
    assert len(data.catalog.user_ids) == 30 and len(data.catalog.item_ids) == 40
    assert len(data.train) > 0 and len(data.test.samples) > 0


def test_missing_label_column(config, tables):
    tables.interactions = tables.interactions.drop(columns=["buy"])
    with pytest.raises(DataError, match=r"interactions table: missing column\(s\) \['buy'\]"):
        prepare(tables, config)


def test_missing_feature_column_in_side_table(config, tables):
    tables.users = tables.users.drop(columns=["country"])
    with pytest.raises(DataError, match=r"users table: missing column\(s\) \['country'\]"):
        prepare(tables, config)


def test_non_numeric_label(config, tables):
    tables.interactions["stars"] = tables.interactions["stars"].astype(object)
    tables.interactions.loc[3, "stars"] = "five"
    with pytest.raises(DataError, match=r"label 'stars' must be numeric, found 'five' at rows 3"):
        prepare(tables, config)


def test_nan_label_of_root_task(config, tables):
    tables.interactions.loc[7, "click"] = np.nan
    with pytest.raises(DataError, match=r"label 'click' \(task 'click'\) is NaN at rows 7"):
        prepare(tables, config)


def test_nan_child_label_allowed_only_where_parent_is_zero(config, tables):
    tables.interactions.loc[5, "buy"] = np.nan
    with pytest.raises(DataError, match="label 'buy'.*NaN at rows 5"):
        prepare(tables, config)
    tables.interactions.loc[5, "click"] = 0.0
    prepare(tables, config)  # no buy label where nothing was clicked is fine


def test_out_of_range_binary_label(config, tables):
    tables.interactions.loc[2, "buy"] = 2.0
    with pytest.raises(DataError, match=r"binary label 'buy' must be 0 or 1, found 2.0 at rows 2"):
        prepare(tables, config)


def test_duplicate_pairs_and_ids(config, tables):
    dup = pd.concat([tables.interactions, tables.interactions.iloc[[0]]], ignore_index=True)
    with pytest.raises(DataError, match="duplicate \\(user, item\\) pairs"):
        prepare(Tables(dup, tables.users, tables.items), config)
    users = pd.concat([tables.users, tables.users.iloc[[4]]], ignore_index=True)
    with pytest.raises(DataError, match="users table: duplicate ids in 'user': 'u4'"):
        prepare(Tables(tables.interactions, users, tables.items), config)


def test_unknown_ids_in_side_table(config, tables):
    tables.items = tables.items[tables.items["item"] != "i3"]
    with pytest.raises(DataError, match="missing from the items table's 'item' column: 'i3'"):
        prepare(tables, config)


def test_non_numeric_numeric_feature(config, tables):
    tables.items["price"] = tables.items["price"].astype(object)
    tables.items.loc[0, "price"] = "cheap"
    with pytest.raises(DataError, match="numeric feature 'price' has non-numeric values 'cheap'"):
        prepare(tables, config)


def test_bad_time_column(config, tables):
    tables.interactions["ts"] = tables.interactions["ts"].astype(object)
    tables.interactions.loc[0, "ts"] = "yesterday-ish"
    with pytest.raises(DataError, match="time column .ts. has values that are neither numbers nor dates, e.g. .yesterday-ish. at rows 0"):
        prepare(tables, config)


def test_empty_valid_split(config):
    tiny = make_tables(n_users=3, per_user=2)  # users with < 3 rows stay in train
    with pytest.raises(DataError, match="the valid split is empty"):
        prepare(tiny, config)


def test_empty_test_split(config):
    cfg = config.with_overrides(["data.split.method=random", "data.split.valid=0.4", "data.split.test=0.001"])
    with pytest.raises(DataError, match="the test split is empty"):
        prepare(make_tables(n_users=3, per_user=5), cfg)


def test_a_split_without_validation_is_refused_when_the_config_is_read():
    with pytest.raises(ConfigError, match="data.split.valid: Input should be greater than 0"):
        make_config(data__split__valid=0)


def test_negative_label_must_name_a_task_label(tables):
    cfg = make_config(**{"data__negatives__labels": "{clicked: 0}"})
    with pytest.raises(DataError, match="'clicked' is not the label column of any task"):
        prepare(tables, cfg)


def test_config_errors_are_specific():
    with pytest.raises(ConfigError, match="model.arch"):
        make_config(model__arch="transformer")
    with pytest.raises(ConfigError, match="depends_on must name a binary task"):
        Config.from_dict({**BASE, "tasks": [{"name": "a", "kind": "binary", "depends_on": "zzz"}]})
    with pytest.raises(ConfigError, match="not of the form key=value"):
        make_config().with_overrides(["model.arch"])
    with pytest.raises(ConfigError, match="does not fit kind"):
        Config.from_dict({**BASE, "tasks": [{"name": "a", "kind": "regression", "loss": "bce"}]})


def test_read_table_formats(tmp_path, tables):
    tables.interactions.to_parquet(tmp_path / "x.parquet")
    tables.interactions.to_csv(tmp_path / "x.csv", index=False)
    assert len(read_table(tmp_path / "x.parquet", "interactions")) == len(tables.interactions)
    assert list(read_table(tmp_path / "x.csv", "interactions").columns) == list(tables.interactions.columns)
    with pytest.raises(DataError, match="unsupported format '.json'"):
        (tmp_path / "x.json").write_text("{}")
        read_table(tmp_path / "x.json", "interactions")
    with pytest.raises(DataError, match="interactions file not found"):
        read_table(tmp_path / "nope.csv", "interactions")
