"""Language-model text: encoding cache, templates, whitening, text-aware models, cold start, LoRA."""
import numpy as np
import pandas as pd
import pytest
import torch

from polyrec.data.dataset import prepare
from polyrec.errors import DataError
from polyrec.evaluate.evaluator import predict_logits
from polyrec.models.network import model_for
from polyrec.objective import Objective
from polyrec.recommender import MultiTaskRecommender
from polyrec.text.encoder import TextEncoder
from polyrec.text.inputs import Whitening, encode_text
from polyrec.text.lora import LoraItemEncoder
from polyrec.text.templates import render
from tests.conftest import make_config, make_tables

TEXT = ["text.item_template={name} tagged {tags}", "text.user_template=from {country}, aged {age}",
        "text.user_history=3", "text.whiten_dim=8", "text.dim=4"]


def text_config(tmp_path, *extra):
    cfg = make_config()
    return cfg.with_overrides(TEXT + [f"text.cache_dir={tmp_path / 'cache'}", "train.max_epochs=1", *extra])


def test_encoder_caches_by_model_and_text(tmp_path):
    first = TextEncoder(cache_dir=tmp_path, progress=False)
    vectors = first.encode(["Toy Story (1995)", "Heat (1995)", "Toy Story (1995)"])
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[2]) and not np.allclose(vectors[0], vectors[1])
    second = TextEncoder(cache_dir=tmp_path, progress=False)
    assert np.array_equal(second.encode(["Heat (1995)"]), vectors[1:2])
    assert second._model is None  # served from the cache: the language model was never loaded
    mixed = second.encode(["Heat (1995)", "Alien (1979)"])  # one cached, one new
    assert np.array_equal(mixed[0], vectors[1]) and second._model is not None


def test_template_names_missing_column_and_renders_missing_values_empty():
    frame = pd.DataFrame({"title": ["Heat", "Alien"], "year": [1995, None]})
    assert render("{title} ({year})", frame, "t") == ["Heat (1995)", "Alien ()"]
    with pytest.raises(DataError, match=r"text.item_template uses column\(s\) \['genres'\]"):
        render("{title} {genres}", frame, "text.item_template")


def test_whitening_decorrelates_to_unit_variance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 3
    white = Whitening.fit(x, 4)(x)
    assert white.shape == (500, 4)
    assert np.allclose(np.cov(white.T), np.eye(4), atol=1e-4) and np.allclose(white.mean(0), 0, atol=1e-5)


def test_cold_items_never_reach_train_or_valid(config):
    data = prepare(make_tables(), config.with_overrides(["data.cold_items=0.2"]))
    cold = data.cold_items
    assert len(cold) == 8
    for samples in (data.train, data.valid.samples, data.valid.interactions):
        assert not np.isin(samples.item.numpy(), cold).any()
    assert np.isin(data.test.interactions.item.numpy(), cold).any()
    assert data.test.restrict_items(cold).interactions.item.numpy().tolist() == [
        i for i in data.test.interactions.item.numpy().tolist() if i in set(cold.tolist())]


def prepare_with_text(tables, cfg):
    data = prepare(tables, cfg)
    return data.with_text(encode_text(cfg.text, data.user_table, data.item_table, False))


def test_gradients_reach_every_text_parameter(tmp_path):
    cfg = text_config(tmp_path)
    data = prepare_with_text(make_tables(), cfg)
    model = model_for(cfg, data)
    logits = model(data.train.user, data.train.item)
    Objective.from_config(cfg).losses(logits, data.train.labels).sum().backward()
    text_params = [n for n, _ in model.named_parameters() if ".text." in n]
    assert len(text_params) >= 6
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_text_model_trains_explains_and_round_trips(tmp_path):
    rec = MultiTaskRecommender(text_config(tmp_path)).fit(make_tables())
    items = rec.recommend("u3", k=5)
    assert len(items) == 5 and all(len(it["because"]) == 2 for it in items)
    seen = {rec.catalog.titles[i] for i in rec.history[rec.catalog.user_index["u3"]]}
    assert all(set(it["because"]) <= seen for it in items)
    rec.save(tmp_path / "run")
    loaded = MultiTaskRecommender.load(tmp_path / "run")
    users, item_ids = ["u1", "u2", "u3"], ["i1", "i5", "i9"]
    pd.testing.assert_frame_equal(rec.predict(users, item_ids), loaded.predict(users, item_ids))


def test_new_item_and_new_user_are_recommendable_without_retraining(tmp_path):
    rec = MultiTaskRecommender(text_config(tmp_path)).fit(make_tables())
    n_items = len(rec.catalog.item_ids)
    rec.add_items(pd.DataFrame({"item": ["fresh"], "name": ["Item 3"], "tags": ["c|a|d"]}))  # no price
    rec.add_users(pd.DataFrame({"user": ["newbie"], "country": ["de"], "age": [33]}))
    assert len(rec.catalog.item_ids) == n_items + 1
    scores = rec.predict(["u1", "newbie"], ["fresh", "fresh"])
    assert np.isfinite(scores.drop(columns=["user_id", "item_id"]).to_numpy()).all()
    ranked = rec.recommend("newbie", k=n_items + 1)
    assert len(ranked) == n_items + 1 and "fresh" in {it["item_id"] for it in ranked}
    assert all("because" not in it for it in ranked)  # no history, nothing to explain with
    # a new item with the same fields and text as a known one is scored as that item would be without its ID
    tables = make_tables()
    twin = tables.items[tables.items["item"] == "i3"].assign(item="twin-of-i3")
    rec.add_items(twin)
    model, i3, new = rec.model, rec.catalog.item_index["i3"], rec.catalog.item_index["twin-of-i3"]
    id_column = [s.name for s in rec.encoder.side_specs("item", "cat")].index("item")
    model.tables.item_cat[i3, id_column] = rec.encoder.offsets["item"]   # i3's id hidden: out of vocabulary
    assert torch.equal(model.tables.item_cat[i3], model.tables.item_cat[new])
    assert torch.allclose(model.tables.item_text[i3], model.tables.item_text[new], atol=1e-6)
    pd.testing.assert_frame_equal(rec.predict(["u1"], ["i3"]).drop(columns="item_id"),
                                  rec.predict(["u1"], ["twin-of-i3"]).drop(columns="item_id"), atol=1e-6)
    with pytest.raises(DataError, match="already known"):
        rec.add_items(pd.DataFrame({"item": ["i3"], "name": ["x"]}))
    with pytest.raises(DataError, match=r"new users table: missing column\(s\) \['user'\]"):
        rec.add_users(pd.DataFrame({"id": ["x"]}))


def test_lora_fine_tunes_adapters_only_and_bundles_them(tmp_path):
    cfg = text_config(tmp_path, "text.mode=lora", "text.lora_rank=2", "train.batch_size=128")
    rec = MultiTaskRecommender(cfg)
    tables = make_tables(n_users=12, n_items=15, per_user=6)
    data = prepare_with_text(tables, cfg)
    encoder = LoraItemEncoder.for_catalog(cfg.text, data.text.item_texts, data.text.item_whitening)
    before = {k: v.clone() for k, v in encoder.state_dict().items() if "lora_B" in k}
    rec.fit_prepared(data)
    after = {k: v for k, v in rec.model.item_encoder.state_dict().items() if "lora_B" in k}
    assert before and any(not torch.equal(before[k], after[k]) for k in before)  # adapters trained
    frozen = [n for n, p in rec.model.item_encoder.named_parameters() if not p.requires_grad]
    assert frozen and all("lora_" not in n for n in frozen)
    rec.save(tmp_path / "run")
    assert (tmp_path / "run" / "model.safetensors").stat().st_size < 5_000_000  # base model left out
    loaded = MultiTaskRecommender.load(tmp_path / "run")
    pd.testing.assert_frame_equal(rec.predict(["u1", "u2"], ["i1", "i4"]), loaded.predict(["u1", "u2"], ["i1", "i4"]))


def test_cli_recommends_new_items_to_a_new_user(tmp_path):
    import json

    from typer.testing import CliRunner

    from polyrec.cli import app
    rec = MultiTaskRecommender(text_config(tmp_path)).fit(make_tables())
    run = str(rec.save(tmp_path / "run"))
    (tmp_path / "item.json").write_text(json.dumps([{"item": "brand-new", "name": "Item 7", "tags": "a"}]))
    out = CliRunner().invoke(app, ["recommend", run, "--new-user", '{"user": "nu", "country": "fr", "age": 30}',
                                   "--new-item", f"@{tmp_path / 'item.json'}", "-k", "41", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)  # stderr may carry the model loader's progress bar
    assert result["user_id"] == "nu" and len(result["items"]) == 41
    assert "brand-new" in {it["item_id"] for it in result["items"]}
    bad = CliRunner().invoke(app, ["recommend", run, "--user", "u1", "--new-item", "{oops"])
    assert bad.exit_code == 2 and "--new-item: not valid JSON" in bad.output


def test_a_run_directory_does_not_choose_where_files_go_or_which_model_loads(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from polyrec.cli import app
    rec = MultiTaskRecommender(text_config(tmp_path, "data.verb=bought")).fit(make_tables())
    run = rec.save(tmp_path / "run")
    out = CliRunner().invoke(app, ["recommend", str(run), "--user", "u1", "-k", "3"], env={"COLUMNS": "250"})
    assert out.exit_code == 0 and "because you bought" in out.stdout
    config = json.loads((run / "config.json").read_text())
    config["text"]["cache_dir"] = str(tmp_path / "elsewhere")   # a crafted run folder
    (run / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("POLYREC_CACHE", str(tmp_path / "own-cache"))
    new_item = ["--new-item", '{"item": "x1", "name": "A brand new thing", "tags": "a"}']
    out = CliRunner().invoke(app, ["recommend", str(run), "--user", "u1", *new_item, "--json"])
    assert out.exit_code == 0, out.output
    assert not (tmp_path / "elsewhere").exists() and list((tmp_path / "own-cache" / "text").glob("*.npz"))
    config["text"]["model"] = str(tmp_path / "some-model-folder")   # a local path named by the run folder
    (run / "config.json").write_text(json.dumps(config))
    out = CliRunner().invoke(app, ["recommend", str(run), "--user", "u1", *new_item])
    assert out.exit_code == 2 and "a run directory may not choose which files are loaded" in out.stderr
    out = CliRunner().invoke(app, ["recommend", str(run), "--user", "u1", *new_item, "--text-model",
                                   "all-MiniLM-L6-v2", "--json", "-k", "50"])
    assert out.exit_code == 0 and "x1" in {item["item_id"] for item in json.loads(out.stdout)["items"]}
    # naming the model keeps the run directory's own places (its default export paths)
    out = CliRunner().invoke(app, ["export", str(run), "--onnx", "--text-model", "all-MiniLM-L6-v2"])
    assert out.exit_code == 0, out.output
    assert (run / "model.onnx").exists()


def test_low_cardinality_profile_text_is_still_whiten_dim_wide(tmp_path):
    """Two distinct profiles give a whitening of rank 1: its vector is still whiten_dim wide."""
    cfg = text_config(tmp_path, "text.user_template=from {country}")
    tables = make_tables()
    tables.users["country"] = ["de" if u % 2 else "fr" for u in range(len(tables.users))]
    data = prepare_with_text(tables, cfg)
    profile = data.text.user
    assert profile.shape[1] == 8 and (profile[:, 1:] == 0).all() and profile[:, 0].abs().min() > 0
    rec = MultiTaskRecommender(cfg).fit_prepared(data)
    assert len(rec.recommend("u1", k=3)) == 3


def test_history_text_is_the_whitened_mean_of_the_rows_last_earlier_items(tmp_path):
    cfg = text_config(tmp_path)
    data = prepare_with_text(make_tables(), cfg)
    model = model_for(cfg, data)
    raw = TextEncoder(cfg.text.model, cfg.text.cache_dir, progress=False).encode(data.text.item_texts)
    events = data.histories.item
    for samples in (data.train, data.test.samples):
        got = model.history_text(samples.user, samples.history)
        for row, (a, b) in enumerate(samples.history.tolist()):
            items = events[max(a, b - 3):b]
            expected = data.text.item_whitening(raw[items].mean(0, keepdims=True))[0] if len(items) else np.zeros(8)
            np.testing.assert_allclose(got[row].numpy(), expected, atol=1e-5)
    assert (data.test.samples.history[:, 1] - data.test.samples.history[:, 0]).float().mean() > \
        (data.train.history[:, 1] - data.train.history[:, 0]).float().mean()   # test rows read more of the past


def test_a_training_row_reads_no_later_interaction_through_the_history_text(tmp_path):
    """The user-history text of a row is the user's last items strictly before the row: moving the
    user's last training interaction to another item changes nothing for the rows before it (with
    the weights kept at their seeded start, lr ~ 0, and no BatchNorm statistics to learn)."""
    cfg = text_config(tmp_path, "train.lr=1e-12", "model.batch_norm=false")
    tables = make_tables()
    data = prepare(tables, cfg)
    user = data.catalog.user_index["u0"]
    last = data.catalog.item_ids[data.train_history[user][-1]]
    untouched = sorted(set(data.catalog.item_ids) - set(tables.interactions.loc[tables.interactions.user == "u0", "item"]))
    moved = make_tables()
    moved.interactions.loc[(moved.interactions.user == "u0") & (moved.interactions.item == last), "item"] = untouched[0]

    def earlier_rows(tables):
        rec = MultiTaskRecommender(cfg).fit(tables)
        data = prepare(tables, cfg)
        train = data.train
        rows = (train.user == user) & (train.labels[:, 0] == 1) & (train.item != data.catalog.item_index[last]) \
            & (train.item != data.catalog.item_index[untouched[0]])
        logits = predict_logits(rec.model, train.user[rows], train.item[rows], train.context(rows))
        order = torch.argsort(train.item[rows])
        return train.item[rows][order], logits[order]

    (items, before), (same_items, after) = earlier_rows(tables), earlier_rows(moved)
    assert len(items) >= 5 and torch.equal(items, same_items)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_lora_encodes_the_catalog_once_until_its_weights_change(tmp_path, monkeypatch):
    """Scoring in eval mode reads one encoding of the catalog: recommending, predicting and every
    ranking chunk do not encode it again; training, or new weights loaded, do."""
    cfg = text_config(tmp_path, "text.mode=lora", "text.lora_rank=2", "train.batch_size=128")
    tables = make_tables(n_users=12, n_items=15, per_user=6)
    rec = MultiTaskRecommender(cfg).fit_prepared(prepare_with_text(tables, cfg))
    encoder = rec.model.item_encoder
    calls, encode = [], type(encoder)._encode_catalog

    def counted(self):
        calls.append(1)
        return encode(self)

    monkeypatch.setattr(type(encoder), "_encode_catalog", counted)
    first = rec.predict(["u1"], ["i2"])
    rec.recommend("u1", k=3)
    rec.evaluate()
    assert len(calls) <= 1
    calls.clear()
    rec.model.train()
    rec.model.eval()
    assert len(calls) == 1
    rec.model.load_state_dict(rec.model.state_dict())
    pd.testing.assert_frame_equal(rec.predict(["u1"], ["i2"]), first)
    rec.predict(["u1"], ["i3"])
    assert len(calls) == 2
