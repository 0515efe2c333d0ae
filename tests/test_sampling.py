"""Splits, negative sampling and feature encoding."""
import numpy as np
import pandas as pd
import pytest

from polyrec.config import FeatureSpec, SplitSpec
from polyrec.data.features import MISSING, OOV, PAD, FeatureEncoder
from polyrec.data.negatives import sample_negatives
from polyrec.data.split import TEST, TRAIN, VALID, split_rows


def test_temporal_split_per_user_by_time_ties_by_item():
    # user 0: 20 rows; user 1: 3 rows with tied times; user 2: 2 rows (too few: all train)
    user = np.array([0] * 20 + [1] * 3 + [2] * 2)
    item = np.array(list(range(20)) + [9, 5, 7] + [1, 2])
    time = np.array(list(range(100, 80, -1)) + [5, 5, 5] + [1, 2])
    code = split_rows(user, item, time, SplitSpec(method="temporal", valid=0.1, test=0.1), seed=0)
    u0_order = np.argsort(time[:20])
    assert code[:20][u0_order].tolist() == [TRAIN] * 16 + [VALID] * 2 + [TEST] * 2
    assert code[20:23].tolist() == [TEST, TRAIN, VALID]  # ties broken by item: 5 < 7 < 9
    assert code[23:].tolist() == [TRAIN, TRAIN]


def test_leave_last_out_and_random():
    user = np.repeat(np.arange(50), 10)
    item = np.tile(np.arange(10), 50)
    time = np.tile(np.arange(10), 50)
    code = split_rows(user, item, time, SplitSpec(method="leave_last_out"), seed=0)
    assert (code.reshape(50, 10)[:, -1] == TEST).all() and (code.reshape(50, 10)[:, -2] == VALID).all()
    code = split_rows(user, item, None, SplitSpec(method="random", valid=0.2, test=0.2), seed=3)
    assert abs((code == TEST).mean() - 0.2) < 0.05 and abs((code == VALID).mean() - 0.2) < 0.05
    assert (split_rows(user, item, None, SplitSpec(method="random"), seed=3) ==
            split_rows(user, item, None, SplitSpec(method="random"), seed=3)).all()


def test_negatives_avoid_every_interaction_and_are_seeded():
    n_items = 20
    user = np.repeat(np.arange(5), 15)
    item = np.concatenate([np.random.default_rng(u).choice(n_items, 15, replace=False) for u in range(5)])
    keys = np.unique(user * n_items + item)
    neg = sample_negatives(user, 4, keys, n_items, np.random.default_rng(7))
    assert len(neg) == len(user) * 4
    assert not np.isin(np.repeat(user, 4) * n_items + neg, keys).any()
    assert (neg == sample_negatives(user, 4, keys, n_items, np.random.default_rng(7))).all()


def test_feature_encoding_oov_missing_buckets_numeric_multi():
    specs = [FeatureSpec(name="color", source="item"),
             FeatureSpec(name="size", source="item", kind="bucket", boundaries=[10, 20]),
             FeatureSpec(name="price", source="item", kind="numeric"),
             FeatureSpec(name="tags", source="item", kind="multi")]
    train = pd.DataFrame({"color": ["red", "blue", None], "size": [5, 15, 25], "price": [1.0, 3.0, np.nan],
                          "tags": ["a|b", "b", None]})
    enc = FeatureEncoder(specs).fit(pd.DataFrame(), train)
    new = pd.DataFrame({"color": ["blue", "green", None], "size": [np.nan, 10, 99], "price": [2.0, np.nan, 5.0],
                        "tags": ["b|zzz", "", "a"]})
    side = enc.transform(new, "item")
    color = side.cat[:, 0] - enc.offsets["color"]
    assert color.tolist() == [enc.vocab["color"]["blue"], OOV, MISSING]
    size = side.cat[:, 1] - enc.offsets["size"]
    assert size.tolist() == [MISSING, 3, 4]  # boundaries [10, 20]: 10 falls in the second bucket
    assert side.num[:, 0].tolist() == pytest.approx([0.0, 0.0, 3 / np.sqrt(2)])  # mean 2, std sqrt(2)
    tags = side.multi[0] - enc.offsets["tags"]
    assert tags[0].tolist() == [enc.vocab["tags"]["b"], OOV]
    assert tags[1].tolist()[0] == MISSING and side.multi[0][1, 1] == PAD
    restored = FeatureEncoder.from_json(enc.to_json())
    assert (restored.transform(new, "item").cat == side.cat).all()


def test_a_splits_negatives_avoid_only_what_is_known_by_its_end():
    """Phase-aware sampling: train negatives avoid the train interactions, valid negatives the train
    and valid ones, test negatives all; so a user's later items can be a training negative, as
    any other item the user had not touched yet (avoiding them would favour the test items)."""
    from polyrec.data.dataset import prepare
    from tests.conftest import make_config, make_tables

    data = prepare(make_tables(), make_config(data__negatives__per_positive=8))
    n_items = len(data.catalog.item_ids)
    key = lambda s: s.user.numpy() * n_items + s.item.numpy()  # noqa: E731
    train = key(data.train)[data.train.labels[:, 0].numpy() == 1]
    valid, test = key(data.valid.interactions), key(data.test.interactions)
    drawn = {}
    for name, samples in (("train", data.train), ("valid", data.valid.samples), ("test", data.test.samples)):
        negative = samples.labels[:, 0].numpy() == 0
        drawn[name] = key(samples)[negative]
    assert not np.isin(drawn["train"], train).any()
    assert not np.isin(drawn["valid"], np.r_[train, valid]).any()
    assert not np.isin(drawn["test"], np.r_[train, valid, test]).any()
    assert np.isin(drawn["train"], np.r_[valid, test]).sum() > 10   # the future is not avoided
    assert np.isin(drawn["valid"], test).sum() > 0


def test_whole_numbers_read_as_the_same_token_everywhere():
    """A year column with a missing value is stored as floats (1995.0); its vocabulary, the text the
    language model reads, a new item's year and a filter all read it as "1995"."""
    from polyrec.text.templates import render
    spec = FeatureSpec(name="year", source="item")
    years = pd.DataFrame({"year": [1995.0, np.nan, 1998.0], "title": ["Heat", "Alien", "Ronin"]})
    enc = FeatureEncoder([spec]).fit(pd.DataFrame(), years)
    assert set(enc.vocab["year"]) == {"1995", "1998"}
    new = enc.transform(pd.DataFrame({"year": [1998, "1995", 2001.5]}), "item").cat[:, 0] - enc.offsets["year"]
    assert new.tolist() == [enc.vocab["year"]["1998"], enc.vocab["year"]["1995"], OOV]
    assert render("{title} ({year})", years, "t") == ["Heat (1995)", "Alien ()", "Ronin (1998)"]
    tags = FeatureEncoder([FeatureSpec(name="tags", source="item", kind="multi")]).fit(
        pd.DataFrame(), pd.DataFrame({"tags": [[1.0, 2.0], None]}))
    assert set(tags.vocab["tags"]) == {"1", "2"}
