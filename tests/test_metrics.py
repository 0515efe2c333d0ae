"""Metrics against scikit-learn and hand-computed cases."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    roc_auc_score,
)

from polyrec.evaluate import metrics as M


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 2000).astype(float)
    score = np.round(rng.random(2000) + 0.3 * label, 1)  # rounding makes many ties
    user = rng.integers(0, 50, 2000)
    return user, label, score


def test_auc_matches_sklearn_with_ties(scored):
    _, label, score = scored
    assert M.auc(label, score) == pytest.approx(roc_auc_score(label, score), abs=1e-12)
    assert math.isnan(M.auc(np.ones(5), np.arange(5.0)))


def test_gauc_is_count_weighted_mean_of_user_aucs(scored):
    user, label, score = scored
    values, weights = [], []
    for u in np.unique(user):
        rows = user == u
        if 0 < label[rows].sum() < rows.sum():
            values.append(roc_auc_score(label[rows], score[rows]))
            weights.append(rows.sum())
    assert M.gauc(user, label, score) == pytest.approx(np.average(values, weights=weights), abs=1e-12)


def test_pointwise_regression_and_logloss(scored):
    _, label, score = scored
    prob = np.clip(score / score.max(), 0.01, 0.99)
    assert M.logloss(label, prob) == pytest.approx(log_loss(label, prob), rel=1e-9)
    assert M.rmse(label, score) == pytest.approx(math.sqrt(mean_squared_error(label, score)))
    assert M.mae(label, score) == pytest.approx(mean_absolute_error(label, score))


def test_ild_and_novelty_hand_computed():
    # items 0 and 1 share a vector, item 2 is orthogonal to both
    vectors = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    popularity = torch.tensor([0.5, 0.25, 0.125])
    acc = M.RankingAccumulator([2, 3], 3, vectors.__getitem__, popularity)
    truth = torch.ones(2, 3, dtype=torch.bool)
    acc.add(torch.tensor([[0, 1, 2], [0, 2, 1]]), truth)
    r = acc.result()
    assert r["ild@2"] == pytest.approx((0 + 1) / 2)            # [0, 1] alike, [0, 2] apart
    assert r["ild@3"] == pytest.approx(2 / 3)                   # 2 of the 3 pairs apart, both lists
    assert r["novelty@2"] == pytest.approx(((1 + 2) / 2 + (1 + 3) / 2) / 2)
    assert r["novelty@3"] == pytest.approx(2.0)


def test_ranking_metrics_hand_computed():
    # user 0: truth {1, 4}; top-3 = [1, 0, 4] -> hits at ranks 1 and 3
    # user 1: truth {2};    top-3 = [0, 1, 3] -> no hit
    # user 2: no truth -> not counted
    top = torch.tensor([[1, 0, 4], [0, 1, 3], [2, 3, 4]])
    truth = torch.zeros(3, 5, dtype=torch.bool)
    truth[0, [1, 4]] = True
    truth[1, 2] = True
    acc = M.RankingAccumulator([1, 3], n_items=5)
    acc.add(top, truth)
    r = acc.result()
    assert r["users"] == 2
    assert r["recall@3"] == pytest.approx((2 / 2 + 0) / 2)
    assert r["recall@1"] == pytest.approx((1 / 2 + 0) / 2)
    dcg = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)  # min(|truth|, K) = 2 ideal hits
    assert r["ndcg@3"] == pytest.approx((dcg / idcg + 0) / 2)
    assert r["ndcg@1"] == pytest.approx((1.0 + 0) / 2)
    assert r["mrr@3"] == pytest.approx((1.0 + 0) / 2)
    assert r["hit@3"] == pytest.approx(0.5)
    assert r["coverage@3"] == pytest.approx(4 / 5)  # items {0, 1, 3, 4} from the two counted users
    assert r["coverage@1"] == pytest.approx(2 / 5)


def test_ranking_metrics_accumulate_over_chunks():
    rng = np.random.default_rng(1)
    top = torch.from_numpy(np.argsort(-rng.random((40, 30)), 1)[:, :10])
    truth = torch.from_numpy(rng.random((40, 30)) < 0.1)
    whole = M.RankingAccumulator([5, 10], 30)
    whole.add(top, truth)
    parts = M.RankingAccumulator([5, 10], 30)
    parts.add(top[:17], truth[:17])
    parts.add(top[17:], truth[17:])
    assert parts.result() == pytest.approx(whole.result())
