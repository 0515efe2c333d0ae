"""polyrec export --onnx: the graph scores like the model (every task, any batch size), serving
can use it, and its fixed catalog is enforced."""
import pytest
import torch
from fastapi.testclient import TestClient

from polyrec.errors import DataError, RunError
from polyrec.evaluate.evaluator import predict_logits
from polyrec.recommender import MultiTaskRecommender
from polyrec.service import create_app
from tests.conftest import make_config, make_tables


@pytest.mark.parametrize("overrides", [
    {"model__arch": "ple"},
    {"history": "{length: 3, encoder: attention}", "stats": "{}"},
], ids=["ple", "mmoe+history+stats"])
def test_onnx_matches_the_model_on_every_task(tmp_path, overrides):
    rec = MultiTaskRecommender(make_config(train__max_epochs=1, **overrides)).fit(make_tables())
    path = rec.export_onnx(tmp_path / "model.onnx")
    n_users, n_items = len(rec.catalog.user_ids), len(rec.catalog.item_ids)
    user, item = torch.arange(n_users).repeat_interleave(n_items), torch.arange(n_items).repeat(n_users)
    rec.use_onnx(path)
    for size in (1, 7, len(user)):     # the batch is dynamic
        got, want = rec._logits(user[:size], item[:size]), predict_logits(rec.model, user[:size], item[:size])
        assert got.shape == want.shape == (size, 3)
        assert (got - want).abs().max() <= 1e-5
    assert rec.recommend("u1", k=5) == MultiTaskRecommender.recommend(rec, "u1", k=5)
    with pytest.raises(RunError, match="already exists"):
        rec.export_onnx(path)
    mine = tmp_path / "notes.onnx"
    mine.write_text("a file polyrec did not write")
    with pytest.raises(RunError, match="only a graph it exported itself"):
        rec.export_onnx(mine, overwrite=True)
    assert mine.read_text() == "a file polyrec did not write"


def test_onnx_serving_and_its_fixed_catalog(tmp_path):
    rec = MultiTaskRecommender(make_config(train__max_epochs=1)).fit(make_tables())
    run = rec.save(tmp_path / "run")
    loaded = MultiTaskRecommender.load(run)
    with pytest.raises(RunError, match="export it first"):
        loaded.use_onnx()
    loaded.export_onnx()
    assert loaded.onnx_difference(run / "model.onnx") <= 1e-5
    plain = loaded.recommend("u2", k=4)
    loaded.use_onnx()
    assert [i["item_id"] for i in loaded.recommend("u2", k=4)] == [i["item_id"] for i in plain]
    with pytest.raises(DataError, match="catalog is fixed"):
        loaded.add_items(make_tables().items.head(1).assign(item="new"))
    with TestClient(create_app(run, onnx=True), raise_server_exceptions=False) as client:
        got = client.post("/recommend", json={"user": "u2", "k": 4}).json()["items"]
        assert [i["item_id"] for i in got] == [i["item_id"] for i in plain]
        refused = client.post("/items", json={"items": [{"item": "new", "name": "New"}]})
        assert refused.status_code == 400 and "catalog is fixed" in refused.json()["detail"]
    grown = MultiTaskRecommender.load(run)
    grown.add_items(make_tables().items.head(1).assign(item="new"))
    with pytest.raises(RunError, match="export it again"):
        grown.use_onnx()
