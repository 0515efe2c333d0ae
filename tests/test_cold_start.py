"""Cold start: the content → ID-embedding generator, blending by interaction count, new items
scored and recommended through it, and the new-arrivals policy."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch

from polyrec.config import Config
from polyrec.serve.rerank import Exposure, topk_items
from polyrec.models.generator import IdGenerator, SideLayout
from polyrec.models.layers import FeatureEmbedding
from polyrec.recommender import MultiTaskRecommender
from tests.conftest import BASE, make_config


def item_generator(n_items: int, text_dim: int, dim: int, blend: float = 1.0) -> tuple[IdGenerator, FeatureEmbedding]:
    """A generator for an item side with only the ID as categorical field (index 2 + i for item i; 0 = OOV)."""
    layout = SideLayout("item", (0, 1), (0, 0), (0, 0), id_column=0)
    return (IdGenerator(layout, dim, text_dim, hidden=32, oov=0, blend=blend, method="align"),
            FeatureEmbedding(n_items + 2, dim, (1, 0, 0)))


def test_generator_reproduces_known_embeddings_when_text_determines_them():
    torch.manual_seed(0)
    n, text_dim, dim = 600, 8, 4
    text = torch.randn(n, text_dim)
    truth = torch.tanh(text @ torch.randn(text_dim, dim))      # each item's embedding is a function of its text
    generator, embedding = item_generator(n, text_dim, dim)
    with torch.no_grad():
        embedding.table.weight[2:] = truth
    cat = (torch.arange(n) + 2).unsqueeze(1)
    counts = torch.where(torch.arange(n) < 500, 10.0, 0.0)     # the last 100 items were never seen
    empty = torch.zeros(n, 0)
    assert not bool(generator.ready)
    generator.align(embedding, cat, [], empty, text, counts)
    assert bool(generator.ready)
    with torch.no_grad():
        generated = generator.net(generator.content(embedding, cat, [], empty, text))
    unseen = slice(500, None)
    residual = ((generated[unseen] - truth[unseen]) ** 2).sum()
    total = ((truth[unseen] - truth[unseen].mean(0)) ** 2).sum()
    assert 1 - residual / total > 0.9                          # R² on items the fit never saw


def test_blend_moves_monotonically_from_generated_to_own_embedding():
    torch.manual_seed(0)
    generator, embedding = item_generator(5, 3, 4, blend=5.0)
    generator.ready.fill_(True)
    counts = torch.tensor([0.0, 1, 2, 5, 20, 1000])
    a = generator.own_weight(torch.full((6,), 3), counts).squeeze(1)
    assert a[0] == 0 and torch.all(a[1:] > a[:-1]) and a[-1] > 0.99
    assert generator.own_weight(torch.tensor([0]), torch.tensor([1000.0])).item() == 0   # an OOV ID: all generated
    cat, text = torch.full((6, 1), 3), torch.randn(1, 3).expand(6, 3)
    x = embedding(cat, [], torch.zeros(6, 0))
    out = generator(x, embedding, cat, [], torch.zeros(6, 0), text, counts)
    generated = generator.net(generator.content(embedding, cat[:1], [], torch.zeros(1, 0), text[:1]))
    to_own = (out - x).norm(dim=1)
    assert torch.allclose(out[0], generated[0], atol=1e-6)
    assert torch.all(to_own[1:] < to_own[:-1])


def test_exposure_reserves_slots_for_new_items_above_the_threshold():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.2, 0.1]])
    new = torch.tensor([False, False, False, False, True, True])
    assert topk_items(scores, 3).tolist() == [[0, 1, 2]]
    assert topk_items(scores, 3, Exposure(new, 0)).tolist() == [[0, 1, 2]]
    assert topk_items(scores, 3, Exposure(new, 1)).tolist() == [[0, 1, 4]]            # still ordered by score
    assert topk_items(scores, 3, Exposure(new, 2)).tolist() == [[0, 4, 5]]
    assert topk_items(scores, 3, Exposure(new, 2, threshold=0.15)).tolist() == [[0, 1, 4]]
    assert topk_items(scores, 3, Exposure(new, 2, threshold=0.5)).tolist() == [[0, 1, 2]]
    seen = scores.clone()
    seen[0, 4] = -np.inf                                      # an excluded item is never reserved
    assert topk_items(seen, 3, Exposure(new, 1)).tolist() == [[0, 1, 5]]


def hot_and_cold_tables(n_users=40, seed=0):
    """Items tagged 'hot' are clicked by every user, 'cold' ones by few: the tag decides the taste."""
    from polyrec.data.tables import Tables
    rng = np.random.default_rng(seed)
    hot, cold = [f"i{i}" for i in range(10)], [f"i{i}" for i in range(10, 40)]
    rows = []
    for u in range(n_users):
        chosen = list(rng.choice(hot, 5, replace=False)) + list(rng.choice(cold, 1))
        for j, item in enumerate(chosen):
            rows.append((f"u{u}", item, 1000 + 10 * j + u, 1.0, 1.0, 4.0))
    users = pd.DataFrame({"user": [f"u{u}" for u in range(n_users)], "country": "de", "age": 30})
    items = pd.DataFrame({"item": hot + cold, "name": hot + cold, "price": 1.0,
                          "tags": ["hot"] * len(hot) + ["cold"] * len(cold)})
    inter = pd.DataFrame(rows, columns=["user", "item", "ts", "click", "buy", "stars"])
    return Tables(inter, users, items)


@pytest.fixture(scope="module")
def trained_cold_start():
    config = make_config(model__oov_dropout="{item: 0.3}", cold_start="{method: dropout}",
                         train__max_epochs=15, train__patience=15, train__lr=0.01)
    return MultiTaskRecommender(config).fit(hot_and_cold_tables())


def test_new_item_is_scored_by_the_generator_and_recommended_when_it_should_be(trained_cold_start, tmp_path):
    rec = trained_cold_start
    rec.add_items(pd.DataFrame({"item": ["new-hot", "new-cold"], "name": ["new hot", "new cold"],
                                "price": [1.0, 1.0], "tags": ["hot", "cold"]}))
    assert rec.model.item_count[-2:].tolist() == [0, 0]
    users = rec.catalog.user_ids
    scores = rec.predict(users + users, ["new-hot"] * len(users) + ["new-cold"] * len(users))
    hot, cold = scores["click"].to_numpy()[:len(users)], scores["click"].to_numpy()[len(users):]
    assert np.mean(hot > cold) > 0.9
    # recommended among the hot items each user has not seen, ahead of every unseen cold item
    placed = [next(r["rank"] for r in rec.recommend(u, k=40, explain=0) if r["item_id"] == "new-hot") for u in users]
    assert np.mean(np.array(placed) <= 6) > 0.8
    # the score is the generator's: switching it off changes the new item's score
    generator = rec.model.nets[0].generators["item"]
    generator.ready.fill_(False)
    off = rec.predict(users, ["new-hot"] * len(users))["click"].to_numpy()
    generator.ready.fill_(True)
    assert np.abs(off - hot).max() > 1e-3
    # saved and loaded: the same scores (generator, counts and the new items travel with the run)
    rec.save(tmp_path / "run")
    again = MultiTaskRecommender.load(tmp_path / "run").predict(users, ["new-hot"] * len(users))
    np.testing.assert_allclose(again["click"].to_numpy(), hot, rtol=1e-5)


def test_update_learns_only_the_new_items_embedding_rows(trained_cold_start, tmp_path):
    from polyrec.errors import DataError
    rec = trained_cold_start
    rec.add_items(pd.DataFrame({"item": ["fresh"], "name": ["fresh"], "price": [1.0], "tags": ["cold"]}))
    fans = rec.catalog.user_ids[:10]
    mean_score = lambda: rec.predict(fans, ["fresh"] * len(fans))["click"].mean()  # noqa: E731
    first = mean_score()
    before = {k: v.clone() for k, v in rec.model.state_dict().items()}
    done = rec.update(pd.DataFrame({"user": fans, "item": "fresh", "click": 1.0, "buy": 1.0, "stars": 5.0}))
    assert done["new_rows"] == 1 and done["items"] == 1
    after = rec.model.state_dict()
    changed = {k for k in after if after[k].shape != before[k].shape or not torch.equal(after[k], before[k])}
    assert changed == {"nets.0.embedding.table.weight", "tables.item_cat", "item_count"}
    table = after["nets.0.embedding.table.weight"]
    old = before["nets.0.embedding.table.weight"]
    assert len(table) == len(old) + 1 and torch.equal(table[:len(old)], old)     # every earlier row untouched
    fresh = rec.catalog.item_index["fresh"]
    assert rec.model.item_count[fresh] == len(fans)
    assert (after["tables.item_cat"] != before["tables.item_cat"]).sum() == 1    # only its ID cell
    assert mean_score() > first                                                  # its fans now score it higher
    rec.save(tmp_path / "run")                  # the grown vocabulary and table travel with the run
    again = MultiTaskRecommender.load(tmp_path / "run").predict(fans, ["fresh"] * len(fans))["click"].mean()
    assert again == pytest.approx(mean_score(), rel=1e-5)
    with pytest.raises(DataError, match=r"items \['i0'\] were trained on"):
        rec.update(pd.DataFrame({"user": ["u0"], "item": ["i0"], "click": [1.0], "buy": [0.0], "stars": [2.0]}))
    with pytest.raises(DataError, match=r"update rows: missing label column\(s\) \['buy', 'stars'\]"):
        rec.update(pd.DataFrame({"user": ["u0"], "item": ["fresh"], "click": [1.0]}))


def test_align_method_fits_after_training_and_counts_come_from_training_rows(tables):
    config = make_config(cold_start="{method: align, sides: [item, user]}", train__max_epochs=1)
    rec = MultiTaskRecommender(config).fit(tables)
    assert all(bool(g.ready) for g in rec.model.nets[0].generators.values())
    assert rec.model.item_count.sum() == rec.model.user_count.sum() > 0


def test_cold_start_config_checks():
    base = lambda: copy.deepcopy(BASE)  # noqa: E731  (overrides edit the mapping they are applied to)
    Config.from_dict(base(), ["cold_start={method: align, sides: [user]}"])
    with pytest.raises(ValueError, match=r"set model.oov_dropout: \{item: 0.1\}"):
        Config.from_dict(base(), ["cold_start={method: dropout}"])
    without_id = {**base(), "features": [f for f in BASE["features"] if f["name"] != "item"]}
    with pytest.raises(ValueError, match="'item' needs the item ID as a categorical feature"):
        Config.from_dict(without_id, ["cold_start={method: align}"])


def test_readme_cold_start_block_is_a_valid_config_section():
    from pathlib import Path

    import yaml

    from polyrec.config import read_yaml
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    section = text[text.index("## Cold start: new items without retraining"):]
    block = yaml.safe_load(section[section.index("```yaml") + 7:section.index("```", section.index("```yaml") + 7)])
    raw = read_yaml(root / "configs" / "ml100k_mt.yaml")
    raw["model"].update(block["model"])
    config = Config.from_dict({**raw, "cold_start": block["cold_start"]})
    assert config.cold_start.method == "dropout" and config.cold_start.blend == 5
    assert config.model.oov_dropout == {"item_id": 0.1}
