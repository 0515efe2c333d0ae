"""From scores to lists: top-k, fusion, MMR diversity, the field vectors diversity is measured in."""
import math

import pytest
import torch

from polyrec.serve.rerank import Diversity, Exposure, field_vectors, fuse, mmr, topk_items


def test_topk_breaks_ties_by_lower_index():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.9, 0.1]])
    assert topk_items(scores, 4).tolist() == [[1, 3, 0, 2]]


def test_mmr_with_lambda_zero_is_the_plain_ranking():
    torch.manual_seed(0)
    scores = torch.rand(20, 50)
    scores[:, 7] = scores[:, 3]                      # ties keep the lower index first, as plain ranking does
    scores[:, 11] = -float("inf")                    # an excluded item
    vectors = torch.randn(50, 8)
    plain = topk_items(scores, 10)
    pool = topk_items(scores, 30)
    chosen = pool.gather(1, mmr(scores.gather(1, pool), torch.nn.functional.normalize(vectors, dim=1)[pool], 10, 0.0))
    assert torch.equal(chosen, plain)
    assert torch.equal(topk_items(scores, 10, diversity=Diversity(vectors, 0.0)), plain)


def test_mmr_trades_relevance_for_variety():
    # items 0-2 are near copies (same direction) and the best; item 3 points elsewhere
    scores = torch.tensor([[1.0, 0.99, 0.98, 0.5, 0.1]])
    vectors = torch.tensor([[1.0, 0.0], [1.0, 0.01], [1.0, 0.02], [0.0, 1.0], [-1.0, 0.0]])
    assert topk_items(scores, 2).tolist() == [[0, 1]]
    assert topk_items(scores, 2, diversity=Diversity(vectors, 0.5)).tolist() == [[0, 3]]
    assert topk_items(scores, 2, diversity=Diversity(vectors, 0.01)).tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="cannot be combined"):
        topk_items(scores, 2, Exposure(torch.ones(5, dtype=torch.bool), 1), Diversity(vectors, 0.5))


def test_fusion_is_the_weighted_product_of_scores():
    scores = {"watch": torch.tensor([0.9, 0.5, 0.2]), "like": torch.tensor([0.1, 0.8, 0.9]),
              "rating": torch.tensor([2.0, 4.0, 5.0])}
    fused = fuse(scores, {"watch": 1.0, "like": 0.5, "rating": 2.0})
    assert fused.exp().tolist() == pytest.approx([0.9 * 0.1 ** 0.5 * 4, 0.5 * 0.8 ** 0.5 * 16, 0.2 * 0.9 ** 0.5 * 25],
                                                 rel=1e-5)
    assert torch.equal(fuse(scores, {"watch": 1.0, "like": 0.0}), torch.log(scores["watch"]))


def test_field_vectors_share_values_not_ids():
    # columns: [id, genre]; one multi-valued field (padding -1)
    cat = torch.tensor([[10, 3], [11, 3], [12, 4]])
    multi = [torch.tensor([[20, 21], [20, -1], [22, -1]])]
    vectors = field_vectors(cat, multi, skip_column=0)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] == pytest.approx(2 / math.sqrt(3 * 2))   # genre 3 and value 20 in common
    assert similarity[0, 2] == pytest.approx(0.0)
    assert similarity.diagonal().tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_ranking_evaluation_builds_field_vectors_for_the_listed_items_only(monkeypatch):
    """Intra-list diversity needs the field vectors of the recommended items, not a dense
    [n_items, n_values] matrix of the whole catalog (8 GB at a million items)."""
    from polyrec.recommender import MultiTaskRecommender
    from tests.conftest import make_config, make_tables
    rec = MultiTaskRecommender(make_config(train__max_epochs=1)).fit(make_tables())
    expected = rec.evaluate()["ranking"]
    sizes, vectors = [], MultiTaskRecommender.field_vectors

    def counted(self, items=None):
        sizes.append(len(self.catalog.item_ids) if items is None else len(items))
        return vectors(self, items)

    monkeypatch.setattr(MultiTaskRecommender, "field_vectors", counted)
    for task, values in rec.evaluate()["ranking"].items():
        assert values == pytest.approx(expected[task])
    assert sizes and max(sizes) <= 5 * 30 and len(rec.catalog.item_ids) not in sizes   # ks [5], 30 users
