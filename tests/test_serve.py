"""polyrec serve: every endpoint, the bad-request matrix (always a 4xx with a message, never a 5xx),
items added while running (recommendable at once, kept across a restart) and reload."""
import contextlib
import json
import socket
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from polyrec.recommender import MultiTaskRecommender
from polyrec.service import ADDED_ITEMS, MAX_BODY_BYTES, create_app
from tests.conftest import make_config, make_tables


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    rec = MultiTaskRecommender(make_config(train__max_epochs=1)).fit(make_tables())
    return rec.save(tmp_path_factory.mktemp("serve") / "run")


@pytest.fixture()
def client(run_dir):
    (run_dir / ADDED_ITEMS).unlink(missing_ok=True)
    with TestClient(create_app(run_dir), raise_server_exceptions=False) as c:
        yield c


def test_recommend_score_similar_health_and_metrics(client):
    got = client.post("/recommend", json={"user": "u1", "k": 5})
    assert got.status_code == 200
    items = got.json()["items"]
    assert len(items) == 5 and {"item_id", "score", "click", "buy", "stars"} <= set(items[0])
    assert [i["rank"] for i in items] == [1, 2, 3, 4, 5]
    only = client.post("/recommend", json={"user": "u1", "k": 5, "only": [items[3]["item_id"]]}).json()["items"]
    assert [i["item_id"] for i in only] == [items[3]["item_id"]]
    excluded = client.post("/recommend", json={"user": "u1", "k": 5, "exclude": [items[0]["item_id"]]}).json()
    assert items[0]["item_id"] not in [i["item_id"] for i in excluded["items"]]
    new_user = client.post("/recommend", json={"profile": {"country": "de", "age": 33}, "k": 3})
    assert new_user.status_code == 200 and len(new_user.json()["items"]) == 3
    again = client.post("/recommend", json={"profile": {"country": "de", "age": 33}, "k": 3}).json()
    assert again["user"] == new_user.json()["user"]                 # one profile, one new user
    recent = [i["item_id"] for i in again["items"][:2]]
    after = client.post("/recommend", json={"profile": {"country": "de", "age": 33}, "recent": recent, "k": 3}).json()
    assert after["user"] != again["user"] and not set(recent) & {i["item_id"] for i in after["items"]}
    fused = client.post("/recommend", json={"user": "u1", "k": 5, "fusion": {"click": 1, "buy": 2}}).json()
    assert fused["rank_by"] == {"fusion": {"click": 1, "buy": 2}}
    assert [i["score"] for i in fused["items"]] == pytest.approx([i["click"] * i["buy"] ** 2 for i in fused["items"]],
                                                                 rel=1e-4)
    assert fused["items"] == sorted(fused["items"], key=lambda i: -i["score"])
    tagged = client.post("/recommend", json={"user": "u1", "k": 40, "filters": {"tags": ["d"]}}).json()["items"]
    tables = make_tables().items.set_index("item")
    assert tagged and all("d" in str(tables.loc[i["item_id"], "tags"]).split("|") for i in tagged)
    varied = client.post("/recommend", json={"user": "u1", "k": 5, "diversity": 0.0}).json()["items"]
    assert [i["item_id"] for i in varied] == [i["item_id"] for i in items]     # λ = 0: the plain ranking
    scores = client.post("/score", json={"user": "u1", "items": ["i1", "i2"]}).json()["scores"]
    assert [s["item_id"] for s in scores] == ["i1", "i2"] and 0 <= scores[0]["click"] <= 1
    similar = client.get("/items/i1/similar?k=3").json()["similar"]
    assert len(similar) == 3 and "i1" not in [s["item_id"] for s in similar]
    assert client.get("/health").json()["status"] == "ok"
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'polyrec_requests_total{endpoint="/recommend",status="200"}' in metrics.text
    assert "polyrec_request_seconds_bucket" in metrics.text


@pytest.mark.parametrize("method, path, body, status, message", [
    ("post", "/recommend", {"user": "nobody"}, 404, "unknown user id 'nobody'"),
    ("post", "/recommend", {}, 422, "give 'user'"),
    ("post", "/recommend", {"user": "u1", "recent": ["i1"]}, 422, "optional 'recent' items"),
    ("post", "/recommend", {"profile": {"age": 20}, "recent": ["nope"]}, 404, "unknown item id 'nope'"),
    ("post", "/recommend", {"user": "u1", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ("post", "/recommend", {"user": "u1", "k": 10_000}, 422, "k: Input should be less than or equal to 100"),
    ("post", "/recommend", {"user": "u1", "k": "ten"}, 422, "k: Input should be a valid integer"),
    ("post", "/recommend", {"user": "u1", "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
    ("post", "/recommend", {"user": "u1", "exclude": ["no-such-item"]}, 404, "unknown item id 'no-such-item'"),
    ("post", "/recommend", {"user": "u1", "only": []}, 422, "only: List should have at least 1 item"),
    ("post", "/recommend", {"user": "u1", "fusion": {"colour": 1}}, 400, "fusion: weights must name scores"),
    ("post", "/recommend", {"user": "u1", "filters": {"price": ["1"]}}, 400, "'price' is not a categorical"),
    ("post", "/recommend", {"user": "u1", "filters": {"tags": ["zzz"]}}, 400, "tags = ['zzz'] is not among"),
    ("post", "/recommend", {"user": "u1", "diversity": 2}, 422, "diversity: Input should be less than or equal to 1"),
    ("post", "/recommend", {"user": "u1", "diversity": 0.5, "new_slots": 1}, 400, "cannot be combined"),
    ("post", "/score", {"user": "u1", "items": []}, 422, "items: List should have at least 1 item"),
    ("post", "/score", {"user": "u1", "items": ["nope"]}, 404, "unknown item id 'nope'"),
    ("post", "/score", {"user": "u1"}, 422, "items: Field required"),
    ("post", "/items", {"items": [{"item": "i1"}]}, 400, "already known"),
    ("post", "/items", {"items": [{"name": "no id"}]}, 400, "'item'"),
    ("get", "/items/nope/similar", None, 404, "unknown item id 'nope'"),
    ("get", "/items/i1/similar?k=0", None, 422, "k must be between 1 and 100"),
    ("post", "/admin/reload", {"run_dir": "/nonexistent/run"}, 400, "/nonexistent/run"),
])
def test_bad_requests_get_a_4xx_with_a_message(client, method, path, body, status, message):
    response = client.request(method.upper(), path, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_malformed_and_oversized_bodies(client):
    malformed = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 422 and "JSON" in malformed.json()["detail"]
    big = client.post("/score", content=b"x" * (MAX_BODY_BYTES + 1), headers={"content-type": "application/json"})
    assert big.status_code == 413


def test_added_items_are_recommendable_at_once_and_kept_across_restart_and_reload(client, run_dir):
    new = {"item": "fresh", "name": "Fresh item", "price": 10.0, "tags": "a|b"}
    added = client.post("/items", json={"items": [new]})
    assert added.status_code == 201 and added.json() == {"added": ["fresh"]}
    got = client.post("/recommend", json={"user": "u1", "k": 1, "only": ["fresh"]}).json()["items"]
    assert [i["item_id"] for i in got] == ["fresh"]
    assert [json.loads(line) for line in (run_dir / ADDED_ITEMS).read_text().splitlines()] == [new]
    with TestClient(create_app(run_dir)) as restarted:        # a restart replays the added items
        assert restarted.post("/score", json={"user": "u1", "items": ["fresh"]}).status_code == 200
    assert client.post("/admin/reload", json={}).json() == {"run_dir": str(run_dir)}
    assert client.post("/score", json={"user": "u1", "items": ["fresh"]}).status_code == 200


@contextlib.contextmanager
def serving(run_dir):
    """The service of ``run_dir`` on a free loopback port, in a thread; yields its base URL."""
    import uvicorn
    (run_dir / ADDED_ITEMS).unlink(missing_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(run_dir), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        (run_dir / ADDED_ITEMS).unlink(missing_ok=True)


def test_serves_on_a_loopback_port(run_dir):
    with serving(run_dir) as url:
        health = httpx.get(f"{url}/health", timeout=5)
        assert health.status_code == 200 and health.json()["items"] == 40
        docs = httpx.get(f"{url}/openapi.json", timeout=5).json()
        assert {"/recommend", "/score", "/items", "/items/{item_id}/similar", "/health", "/metrics"} <= set(docs["paths"])


def test_new_slots_reserve_new_items_under_fusion_too(client):
    """Reserved slots compare the threshold with the score the list is ranked by, fused or not."""
    client.post("/items", json={"items": [{"item": "fresh2", "name": "Fresh", "price": 1.0}]})
    for fusion in (None, {"click": 1, "buy": 0.5}):
        got = client.post("/recommend", json={"user": "u1", "k": 3, "new_slots": 1, "new_threshold": 1e-6,
                                              "fusion": fusion}).json()
        assert "fresh2" in [i["item_id"] for i in got["items"]], fusion


@pytest.fixture(scope="module")
def text_run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-text")
    cfg = make_config(train__max_epochs=1).with_overrides(
        ["text.item_template=Item {name} tagged {tags}", "text.user_template=from {country}", "text.user_history=3",
         "text.whiten_dim=8", "text.dim=4", f"text.cache_dir={folder / 'cache'}", "history={length: 4}"])
    return MultiTaskRecommender(cfg).fit(make_tables()).save(folder / "run")


def test_a_profile_is_scored_without_being_added_and_reads_items_added_since_load(text_run_dir):
    (text_run_dir / ADDED_ITEMS).unlink(missing_ok=True)
    with TestClient(create_app(text_run_dir), raise_server_exceptions=False) as c:
        assert c.post("/items", json={"items": [{"item": "new1", "name": "New one", "tags": "a"}]}).status_code == 201
        users = c.get("/health").json()["users"]
        for country in ("de", "fr", "it"):
            got = c.post("/recommend", json={"profile": {"country": country}, "recent": ["i3", "new1"], "k": 3})
            assert got.status_code == 200, got.text
            assert {"i3", "new1"}.isdisjoint(i["item_id"] for i in got.json()["items"])
            assert any("because" in i for i in got.json()["items"])
        assert c.get("/health").json()["users"] == users   # nothing was added for the profiles
    (text_run_dir / ADDED_ITEMS).unlink(missing_ok=True)


def test_concurrent_writes_and_reads_never_fail(run_dir):
    """Items added while recommendations, scores and profiles are being served: every request
    reads one whole catalog (bounded: 4 threads × 15 requests, loopback)."""
    statuses = []

    def work(url, kind):
        with httpx.Client(base_url=url, timeout=30) as http:
            for n in range(15):
                if kind == "items":
                    r = http.post("/items", json={"items": [{"item": f"c{n}", "name": f"C {n}", "price": 1.0}]})
                elif kind == "recommend":
                    r = http.post("/recommend", json={"user": "u2", "k": 5, "new_slots": 1})
                elif kind == "profile":
                    r = http.post("/recommend", json={"profile": {"country": "de", "age": 20 + n}, "k": 5})
                else:
                    r = http.post("/score", json={"user": "u2", "items": ["i1", "i2"]})
                statuses.append(r.status_code)

    with serving(run_dir) as url:
        workers = [threading.Thread(target=work, args=(url, k)) for k in ("items", "recommend", "profile", "score")]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        health = httpx.get(f"{url}/health", timeout=5).json()
    assert len(statuses) == 60 and all(s < 500 for s in statuses), statuses
    assert health["items"] == 40 + 15 and health["users"] == 30


def test_the_status_follows_the_kind_of_error_not_its_wording(client, monkeypatch):
    from polyrec.errors import DataError
    assert client.post("/score", json={"user": "nobody", "items": ["i1"]}).status_code == 404
    assert client.get("/items/nothing/similar").status_code == 404

    def bad_input(*args, **kwargs):
        raise DataError("unknown column(s) ['x'] in the request")   # a bad request, whatever its first word

    monkeypatch.setattr(MultiTaskRecommender, "predict", bad_input)
    assert client.post("/score", json={"user": "u1", "items": ["i1"]}).status_code == 400
