"""Behaviour histories: which events a row sees (known answers on a hand-made timeline and
invariants on generated data), the two encoders, and history through save/load and recommend."""
import numpy as np
import pandas as pd
import pytest
import torch

from polyrec.config import HistorySpec
from polyrec.data.dataset import prepare
from polyrec.data.history import EventLog, statistics
from polyrec.data.tables import Tables
from polyrec.errors import ConfigError
from polyrec.models.history import CausalTransformer, EventTable, HistoryBlock, TargetAttention
from polyrec.recommender import MultiTaskRecommender
from tests.conftest import make_config, make_tables

HISTORY = ["history={length: 3}"]


def timeline_tables() -> Tables:
    """User a's rows, split given: i1 at t=1; i2, i3 and a drawn negative n1 at t=2 (a tie);
    valid i4 at t=3; test i5 at t=4 and i6 at t=5 (with a negative n2). User b: one train row."""
    rows = [("a", "i1", 1, 1, "train"), ("a", "i2", 2, 1, "train"), ("a", "i3", 2, 1, "train"),
            ("a", "n1", 2, 0, "train"), ("a", "i4", 3, 1, "valid"), ("a", "i5", 4, 1, "test"),
            ("a", "i6", 5, 1, "test"), ("a", "n2", 5, 0, "test"), ("b", "i1", 7, 1, "train"),
            ("b", "i2", 8, 1, "valid"), ("b", "i3", 9, 1, "test")]
    inter = pd.DataFrame(rows, columns=["user", "item", "ts", "click", "split"]).assign(
        buy=lambda d: d.click * 0, stars=lambda d: np.where(d.click == 1, 4.0, np.nan))
    items = pd.DataFrame({"item": ["i1", "i2", "i3", "i4", "i5", "i6", "n1", "n2"], "price": 1.0, "tags": "a",
                          "name": "x"})
    users = pd.DataFrame({"user": ["a", "b"], "country": "de", "age": 30})
    return Tables(inter, users, items)


def seen(data, samples) -> list[tuple[str, str, list[str]]]:
    """(user, item, the history's items oldest first) per row."""
    items = data.histories.item
    return [(data.catalog.user_ids[u], data.catalog.item_ids[i], [data.catalog.item_ids[j] for j in items[a:b]])
            for u, i, (a, b) in zip(samples.user.tolist(), samples.item.tolist(), samples.history.tolist())]


def test_a_row_sees_only_earlier_known_interactions():
    config = make_config(data__split__method="column", data__negatives__per_positive=0).with_overrides(HISTORY)
    data = prepare(timeline_tables(), config)
    assert sorted(seen(data, data.train)) == sorted([
        ("a", "i1", []), ("a", "i2", ["i1"]), ("a", "i3", ["i1"]),   # a tie in time is not "before"
        ("a", "n1", ["i1"]),                                           # a negative: its moment's history
        ("b", "i1", [])])
    assert seen(data, data.valid.samples) == [("a", "i4", ["i1", "i2", "i3"]), ("b", "i2", ["i1"])]
    # test rows: train and valid interactions before them, never another test row's
    assert sorted(seen(data, data.test.samples)) == sorted([
        ("a", "i5", ["i1", "i2", "i3", "i4"]), ("a", "i6", ["i1", "i2", "i3", "i4"]),
        ("a", "n2", ["i1", "i2", "i3", "i4"]), ("b", "i3", ["i1", "i2"])])


def test_event_table_reads_the_last_events_left_padded():
    config = make_config(data__split__method="column", data__negatives__per_positive=0).with_overrides(HISTORY)
    data = prepare(timeline_tables(), config)
    table = EventTable.of(data.histories, len(data.catalog.user_ids))
    name = lambda i: data.catalog.item_ids[i]  # noqa: E731
    test = data.test.samples
    items, feedback, mask = table(test.user, test.history, 3)
    assert [[name(i) for i, m in zip(row, ok) if m] for row, ok in zip(items.tolist(), mask.tolist())][0] == \
        ["i2", "i3", "i4"]                                    # the last 3 of 4, oldest first
    b = data.catalog.user_index["b"]
    items, feedback, mask = table(torch.tensor([b]), None, 3)  # no span: everything known now
    assert mask.tolist() == [[False, True, True]] and [name(i) for i in items[0, 1:].tolist()] == ["i1", "i2"]
    # what the user did: click 1, buy 0, stars standardized by the train rows' (all 4): 0 with a flag
    assert feedback[0, 2].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize("method", ["temporal", "random"])
def test_no_history_event_is_later_than_its_row_or_from_a_later_period(method):
    config = make_config(data__split__method=method).with_overrides(HISTORY)
    data = prepare(make_tables(), config)
    h = data.histories
    user, time = np.concatenate([h.train.user, h.known.user]), np.concatenate([h.train.time, h.known.time])
    tables = make_tables()
    moment = {(u, i): t for u, i, t in tables.interactions[["user", "item", "ts"]].itertuples(index=False)}
    n_train = len(h.train)
    for samples, first, last in ((data.train, 0, n_train), (data.valid.samples, n_train, len(user)),
                                 (data.test.samples, n_train, len(user))):
        positives = {(int(u), int(i)): tuple(s) for u, i, s, y in zip(samples.user, samples.item,
                                                                       samples.history.tolist(), samples.labels[:, 0])
                     if y == 1}
        for u, i, (a, b), y in zip(samples.user.tolist(), samples.item.tolist(), samples.history.tolist(),
                                   samples.labels[:, 0].tolist()):
            assert first <= a <= b <= last and (user[a:b] == u).all()
            key = (data.catalog.user_ids[u], data.catalog.item_ids[i])
            if y == 1:   # an interaction: every event strictly earlier, never the row itself
                assert (time[a:b] < moment[key]).all() and i not in h.item[a:b]
        assert len(positives)
    # train rows read the train-period log only (its span lies in the first block)
    assert (data.train.history[:, 1] <= n_train).all()


def test_sampled_negatives_share_their_positive_history():
    config = make_config().with_overrides(HISTORY)
    data = prepare(make_tables(), config)
    train = data.train
    positives = train.labels[:, 0] == 1
    spans_of = {}
    for u, span in zip(train.user[positives].tolist(), train.history[positives].tolist()):
        spans_of.setdefault(u, set()).add(tuple(span))
    for u, span in zip(train.user[~positives].tolist(), train.history[~positives].tolist()):
        assert tuple(span) in spans_of[u]


@pytest.mark.parametrize("encoder", ["attention", "transformer"])
def test_encoder_shapes_gradients_and_padding(encoder):
    torch.manual_seed(0)
    spec = HistorySpec(length=5, encoder=encoder, heads=2)
    block = HistoryBlock(spec, dim=8, n_feedback=4, text_dim=6, dropout=0.0)
    items, feedback, text = torch.randn(3, 5, 8), torch.randn(3, 5, 4), torch.randn(3, 5, 6)
    mask = torch.tensor([[False, False, True, True, True], [False] * 5, [True] * 5])
    candidate, candidate_text = torch.randn(3, 8, requires_grad=True), torch.randn(3, 6)
    items.requires_grad_(True)
    out, weights = block(items, feedback, mask, candidate, text, candidate_text)
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())
    assert items.grad[~mask].abs().sum() == 0 and items.grad[mask].abs().sum() > 0   # padding reads nothing
    if encoder == "attention":
        assert weights.shape == (3, 5) and (weights[~mask] == 0).all() and (weights.sum(1) <= 1 + 1e-6).all()
        assert weights[1].sum() == 0
    changed = items.detach().clone()
    changed[~mask] = 100.0
    again, _ = block(changed, feedback, mask, candidate, text, candidate_text)
    assert torch.allclose(again, out)


def test_transformer_layers_are_causal_and_attention_reads_the_candidate():
    torch.manual_seed(0)
    transformer = CausalTransformer(dim=8, length=4, layers=2, heads=2, dropout=0.0)
    block, allowed = transformer.blocks[0], transformer.causal.expand(2, 5, 5)
    x = torch.randn(2, 5, 8)
    later = x.clone()
    later[:, 3:] = torch.randn(2, 2, 8)          # change the two newest positions
    before, after = block(x, allowed, 5), block(later, allowed, 5)
    assert torch.allclose(before[:, :3], after[:, :3]) and not torch.allclose(before[:, 3:], after[:, 3:])
    events, mask = torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.bool)
    newest = events.clone()
    newest[:, -1] = torch.randn(2, 8)
    assert not torch.allclose(transformer(events, None, mask)[0], transformer(newest, None, mask)[0])
    attention = TargetAttention(8)
    x, y = attention(events, torch.randn(2, 8), mask)[0], attention(events, torch.randn(2, 8), mask)[0]
    assert not torch.allclose(x, y)


@pytest.mark.parametrize("encoder,arch", [("attention", "mmoe"), ("transformer", "single")])
def test_history_round_trips_through_save_load_and_recommend(tmp_path, encoder, arch):
    config = make_config(model__arch=arch).with_overrides(HISTORY + [f"history.encoder={encoder}"])
    rec = MultiTaskRecommender(config).fit(make_tables())
    metrics = rec.evaluate()
    path = rec.save(tmp_path / "run", metrics)
    loaded = MultiTaskRecommender.load(path)
    assert loaded.evaluate() == metrics
    pd.testing.assert_frame_equal(loaded.predict(["u1", "u2"], ["i3", "i4"]), rec.predict(["u1", "u2"], ["i3", "i4"]))
    top = loaded.recommend("u1", k=5)
    assert top == rec.recommend("u1", k=5) and len(top) == 5
    known = {loaded.catalog.item_ids[i] for i in loaded.history[loaded.catalog.user_index["u1"]]}
    if encoder == "attention":   # "because": items from the user's own history, most attended first
        assert all(set(r["because"]) <= {loaded.catalog.titles[loaded.catalog.item_index[i]] for i in known}
                   for r in top)
    # the history changes the scores: a user's known history versus none at all
    loaded.add_users(pd.DataFrame({"user": ["new"], "country": ["de"], "age": [30]}))
    assert loaded.recommend("new", k=3)


def test_a_new_user_with_recent_items_is_read_through_them():
    rec = MultiTaskRecommender(make_config(history="{length: 3, encoder: attention}")).fit(make_tables())
    profile = pd.DataFrame({"user": ["n1", "n2"], "country": ["de", "de"], "age": [30, 30]})
    recent = [[], ["i3", "i7", "i11"]]
    rec.add_users(profile, recent)
    plain, informed = rec.predict(["n1"] * 40, [f"i{i}" for i in range(40)]), \
        rec.predict(["n2"] * 40, [f"i{i}" for i in range(40)])
    assert not np.allclose(plain["click"], informed["click"])        # same profile, the history tells them apart
    got = rec.recommend("n2", k=40, explain=2)
    assert not {"i3", "i7", "i11"} & {i["item_id"] for i in got}     # what they just did is not recommended
    assert {"Item 3", "Item 7", "Item 11"} >= {t for i in got for t in i["because"]}
    with pytest.raises(Exception, match="unknown item id 'nope'"):
        rec.add_users(profile.assign(user=["n3", "n4"]), [[], ["nope"]])
    assert "n3" not in rec.catalog.user_index                         # nothing added on a bad request


def test_history_off_is_unchanged_and_history_needs_time():
    with pytest.raises(ConfigError, match="time_col"):
        make_config(data__time_col="null").with_overrides(HISTORY)
    with pytest.raises(ConfigError, match="text.user_history reads interactions in time order"):
        make_config(data__time_col="null", data__split__method="random").with_overrides(
            ["text.item_template=Item {name}", "text.user_history=3"])
    data = prepare(make_tables(), make_config())
    assert data.train.history is None and data.histories is None


def test_statistics_count_only_earlier_events_with_shrinkage():
    log = EventLog.of(np.array([0, 0, 1, 1]), np.array([5, 5, 5, 6]), np.array([1.0, 2.0, 3.0, 4.0]),
                      np.array([[1, 1], [0, 1], [1, 1], [1, 1]], np.float32))
    at = statistics(log, np.array([1, 0]), np.array([5, 6]), np.array([3.5, 1.0]), window=2, shrinkage=2)
    # user 1: one event before 3.5; item 5: three before, two in [1.5, 3.5); its like mean 2/3 shrunk
    # toward the log's 3/4 by 2 pseudo-events: (2 + 1.5) / 5
    np.testing.assert_allclose(at[0], np.log1p([1, 3, 2]).tolist() + [0.7], rtol=1e-6)
    np.testing.assert_allclose(at[1], [0, 0, 0, 0.75], rtol=1e-6)           # nothing before t=1: the mean
    now = statistics(log, np.array([1]), np.array([6]), None, window=2, shrinkage=2)
    np.testing.assert_allclose(now[0], np.log1p([2, 1, 1]).tolist() + [(1 + 1.5) / 3], rtol=1e-6)
    assert np.isfinite(statistics(log, np.array([0]), np.array([9]), None, window=2, shrinkage=0)).all()


def test_row_statistics_exclude_the_row_and_later_periods(tmp_path):
    config = make_config(data__split__method="column", data__negatives__per_positive=0).with_overrides(
        ["stats={window: 100, shrinkage: 0}"])
    data = prepare(timeline_tables(), config)
    rows = lambda s: {(data.catalog.user_ids[u], data.catalog.item_ids[i]): st[:2]  # noqa: E731
                      for u, i, st in zip(s.user.tolist(), s.item.tolist(), np.expm1(s.stats.numpy()).round(6))}
    train, valid = rows(data.train), rows(data.valid.samples)
    assert train[("a", "i1")].tolist() == [0, 0]        # its own interaction is not "before"
    assert train[("a", "i3")].tolist() == [1, 0]        # a's i2 at the same time is not either
    assert train[("b", "i1")].tolist() == [0, 1]        # a's i1, from the train period
    assert valid[("b", "i2")].tolist() == [1, 1]
    rec = MultiTaskRecommender(config.with_overrides(["train.max_epochs=1", "eval.ranking=false"])).fit(
        timeline_tables())
    path = rec.save(tmp_path / "run")
    loaded = MultiTaskRecommender.load(path)
    pd.testing.assert_frame_equal(loaded.predict(["a", "b"], ["i5", "i1"]), rec.predict(["a", "b"], ["i5", "i1"]))
    assert loaded.evaluate() == rec.evaluate()
    loaded.add_items(pd.DataFrame({"item": ["fresh"], "price": [2.0], "tags": ["a"], "name": ["Fresh"]}))
    assert np.isfinite(loaded.predict(["a"], ["fresh"])["click"]).all()


def test_readme_history_sections_are_valid_config():
    from pathlib import Path

    import yaml

    from polyrec.config import Config, read_yaml
    root = Path(__file__).resolve().parent.parent
    text = (root / "README.md").read_text()
    section = text[text.index("## What the user did before"):]
    block = section[section.index("```yaml") + 7:section.index("```", section.index("```yaml") + 7)]
    config = Config.from_dict({**read_yaml(root / "configs" / "ml100k_mt.yaml"), **yaml.safe_load(block)})
    assert config.history.encoder == "attention" and config.stats.shrinkage == 10
