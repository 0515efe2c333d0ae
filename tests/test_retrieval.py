"""Retrieve → rank: the two-tower head, the ANN index over its item vectors, and recommend's use of
them for catalogs above the threshold."""
import pytest
import torch

from polyrec.config import ConfigError
from polyrec.errors import RunError
from polyrec.recommender import MultiTaskRecommender
from polyrec.serve.ann import ItemIndex
from tests.conftest import make_config, make_tables


@pytest.fixture(scope="module")
def rec():
    return MultiTaskRecommender(make_config(train__max_epochs=1, retrieval="{threshold: 10, candidates: 12}")
                                ).fit(make_tables())


def test_index_finds_the_exact_nearest_items():
    torch.manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(3000, 16), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(50, 16), dim=1)
    found = ItemIndex(vectors).search(queries, 20)
    exact = (queries @ vectors.T).topk(20, dim=1).indices
    recall = sum(len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact)) / exact.numel()
    assert recall >= 0.95
    assert ItemIndex(vectors[:5]).search(queries[:1], 8)[0, 5:].tolist() == [-1, -1, -1]


def test_recommend_ranks_the_retrieved_candidates(rec):
    user = rec.catalog.user_index["u3"]
    seen = rec.history[user]
    candidates = rec._candidates(user, len(seen))
    assert len(candidates) == 12 + len(seen)
    vectors = rec.model.retrieval_vectors("item")
    nearest = (rec.model.retrieval_vectors("user", torch.tensor([user])) @ vectors.T)[0].topk(len(candidates))
    assert len(set(candidates.tolist()) & set(nearest.indices.tolist())) >= 0.9 * len(candidates)
    got = rec.recommend("u3", k=5)
    assert {rec.catalog.item_index[i["item_id"]] for i in got} <= set(candidates.tolist()) - set(seen.tolist())
    # the list is the ranker's order over the candidates: the same as exact ranking restricted to them
    exact = rec.recommend("u3", k=5, only=[rec.catalog.item_ids[i] for i in candidates.tolist()])
    assert [i["item_id"] for i in got] == [i["item_id"] for i in exact]


def test_retrieval_head_survives_save_load_and_indexes_new_items(rec, tmp_path):
    loaded = MultiTaskRecommender.load(rec.save(tmp_path / "run"))
    assert torch.allclose(loaded.model.retrieval_vectors("item"), rec.model.retrieval_vectors("item"))
    assert [i["item_id"] for i in loaded.recommend("u3", k=5)] == [i["item_id"] for i in rec.recommend("u3", k=5)]
    n = len(loaded.item_index())
    loaded.add_items(make_tables().items.head(2).assign(item=["new1", "new2"]))
    assert len(loaded.item_index()) == n + 2


def test_exported_index_is_read_back_and_a_stale_one_rebuilt(rec, tmp_path, monkeypatch):
    run = rec.save(tmp_path / "run")
    path = MultiTaskRecommender.load(run).export_ann()
    assert path == run / "items.faiss"

    def no_building(*args, **kwargs):
        raise AssertionError("the index was built, not read")
    with monkeypatch.context() as patch:
        patch.setattr(ItemIndex, "__init__", no_building)
        again = MultiTaskRecommender.load(run)
        assert len(again.item_index()) == len(again.catalog.item_ids)
        assert [i["item_id"] for i in again.recommend("u3", k=5)] == [i["item_id"] for i in rec.recommend("u3", k=5)]
    with pytest.raises(RunError, match="already exists"):
        again.export_ann()
    mine = tmp_path / "notes.txt"
    mine.write_text("a file polyrec did not write")
    with pytest.raises(RunError, match="replaces only an item index it wrote"):
        again.export_ann(mine, overwrite=True)
    assert mine.read_text() == "a file polyrec did not write"
    again.export_ann(overwrite=True)
    path.write_bytes(b"not an index")                        # unreadable: built again, not trusted
    assert len(MultiTaskRecommender.load(run).item_index()) == len(again.catalog.item_ids)


def test_retrieval_config_is_checked():
    with pytest.raises(ConfigError, match="retrieval.task: 'stars' is not a binary task"):
        make_config(retrieval="{task: stars}")
