"""The recommender as an HTTP service: ``polyrec serve RUN_DIR`` (FastAPI + uvicorn).

One run directory is loaded once per process (the language model only when a request needs new
text encoded). Items added while running (``POST /items``) are recommendable at once and kept in
the run directory's ``added_items.jsonl`` (appended atomically: a temporary file renamed over
it), which a restart replays; they are added to a copy of the catalog that replaces the served
one whole, so every request reads one consistent catalog. A new user's profile in
``/recommend`` is scored as it is and never stored. ``POST /admin/reload`` swaps in a run directory: requests already
running finish on the recommender they started with. Every bad request gets a 4xx with a
message; an unexpected failure is a 500 without a traceback.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from polyrec.errors import PolyrecError, UnknownIdError
from polyrec.recommender import MultiTaskRecommender
from polyrec.serve.onnx import ONNX_FILE

MAX_K = 100
MAX_ITEMS = 1000
MAX_BODY_BYTES = 1 << 20
ADDED_ITEMS = "added_items.jsonl"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(_Request):
    user: str | None = Field(None, description="a known user's id (or the id to give a new user's profile)")
    profile: dict[str, Any] | None = Field(None, description="a new user: profile fields and text columns")
    recent: list[str] = Field(default_factory=list, max_length=MAX_ITEMS,
                              description="with a profile: items the new user just interacted with, oldest first")
    k: int = Field(10, ge=1, le=MAX_K)
    exclude: list[str] = Field(default_factory=list, max_length=MAX_ITEMS, description="item ids never to return")
    only: list[str] | None = Field(None, min_length=1, max_length=MAX_ITEMS, description="the only item ids allowed")
    new_slots: int = Field(0, ge=0, le=MAX_K, description="slots reserved for items newer than the training data")
    new_threshold: float = 0.0
    explain: int = Field(2, ge=0, le=10)
    fusion: dict[str, float] | None = Field(None, max_length=16, description="rank by the product of task scores "
                                            "raised to these weights, e.g. {\"watch\": 1, \"like\": 0.5}")
    diversity: float | None = Field(None, ge=0, le=1, description="MMR λ: 0 plain ranking, higher more varied")
    filters: dict[str, list[str]] | None = Field(None, max_length=16, description="item field → allowed values, "
                                                 "e.g. {\"genre\": [\"Drama\", \"Comedy\"]}")


class ScoreRequest(_Request):
    user: str
    items: list[str] = Field(min_length=1, max_length=MAX_ITEMS)


class ItemsRequest(_Request):
    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ITEMS,
                                        description="new items: the item id column, fields and text columns")


class ReloadRequest(_Request):
    run_dir: str | None = Field(None, description="a run directory (default: the one being served)")


class Service:
    """The recommender being served, swapped whole on reload; writes are serialised."""

    def __init__(self, run_dir: str | Path, text_model: str | None = None, onnx: bool = False):
        self.text_model, self.onnx = text_model, onnx
        self.lock = threading.RLock()
        self.rec, self.run_dir = self._load(Path(run_dir))

    def _load(self, run_dir: Path):
        rec = MultiTaskRecommender.load(run_dir, self.text_model)
        added = run_dir / ADDED_ITEMS
        if added.exists():
            rows = [json.loads(line) for line in added.read_text().splitlines() if line.strip()]
            if rows:
                rec.add_items(pd.DataFrame(rows))
        if self.onnx:
            rec.use_onnx(run_dir / ONNX_FILE)
        spec = rec.config.retrieval
        if spec is not None and len(rec.catalog.item_ids) > spec.threshold:
            rec.item_index()   # read or built now, not by the first request
        return rec, run_dir

    def reload(self, run_dir: Path | None) -> None:
        rec, run_dir = self._load(run_dir or self.run_dir)
        with self.lock:
            self.rec, self.run_dir = rec, run_dir

    def add_items(self, rows: list[dict]) -> list[str]:
        """Add to a fork of the served recommender and swap it in whole: a request reads the catalog
        it started with, never one half-changed."""
        with self.lock:
            rec = self.rec.fork()
            ids = rec.add_items(pd.DataFrame(rows))
            path = self.run_dir / ADDED_ITEMS
            old = path.read_text() if path.exists() else ""
            lines = "".join(json.dumps(row, default=str) + "\n" for row in rows)
            fd, tmp = tempfile.mkstemp(dir=self.run_dir, prefix=".added_items.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(old + lines)
                os.replace(tmp, path)
            except BaseException:   # nothing half-written is left behind
                Path(tmp).unlink(missing_ok=True)
                raise
            self.rec = rec
            return ids


def create_app(run_dir: str | Path, text_model: str | None = None, onnx: bool = False) -> FastAPI:
    """The app serving ``run_dir``; ``onnx``: score with its exported ``model.onnx`` in onnxruntime."""
    service = Service(run_dir, text_model, onnx)
    registry = CollectorRegistry()
    requests = Counter("polyrec_requests_total", "HTTP requests", ["endpoint", "status"], registry=registry)
    latency = Histogram("polyrec_request_seconds", "request latency", ["endpoint"], registry=registry,
                        buckets=(.001, .0025, .005, .01, .015, .025, .05, .1, .25, .5, 1, 2.5))
    version = Gauge("polyrec_model_info", "the run directory being served", ["run_dir"], registry=registry)
    version.labels(str(service.run_dir)).set(1)
    app = FastAPI(title="polyrec", description="Multi-task recommendations with every task's score and explanations")

    @app.middleware("http")
    async def measure(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:   # never a traceback in a response
            response = JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)
        endpoint = getattr(request.scope.get("route"), "path", "unmatched")   # the template, not the raw path
        latency.labels(endpoint).observe(time.perf_counter() - start)
        requests.labels(endpoint, str(response.status_code)).inc()
        return response

    @app.exception_handler(PolyrecError)
    async def bad_input(request: Request, err: PolyrecError):
        return JSONResponse({"detail": str(err)}, status_code=404 if isinstance(err, UnknownIdError) else 400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    @app.post("/recommend")
    def recommend(body: RecommendRequest):
        rec = service.rec   # one catalog for the whole request (see Service.add_items)
        user = body.user
        if body.profile is not None:
            # a new user's profile is scored as it is, never added: requests cost no memory
            user_col = rec.config.data.user_col
            digest = hashlib.sha256(json.dumps([body.profile, body.recent], sort_keys=True, default=str).encode()
                                    ).hexdigest()
            profile = {**body.profile, user_col: body.user or body.profile.get(user_col) or f"profile:{digest[:16]}"}
            user = str(profile[user_col])
            rec = rec.for_profile(pd.DataFrame([profile]), body.recent)
        elif user is None or body.recent:
            return JSONResponse({"detail": "give 'user' (a known user's id) or 'profile' (a new user, with "
                                           "optional 'recent' items)"}, status_code=422)
        items = rec.recommend(user, body.k, explain=body.explain, new_slots=body.new_slots,
                              new_threshold=body.new_threshold, exclude=body.exclude, only=body.only,
                              fusion=body.fusion, diversity=body.diversity, filters=body.filters)
        return {"user": user, "rank_by": rec.ranked_by(body.fusion), "items": items}

    @app.post("/score")
    def score(body: ScoreRequest):
        frame = service.rec.predict([body.user] * len(body.items), body.items)
        return {"user": body.user, "scores": frame.drop(columns="user_id").to_dict(orient="records")}

    @app.post("/items", status_code=201)
    def add_items(body: ItemsRequest):
        return {"added": service.add_items(body.items)}

    @app.get("/items/{item_id}/similar")
    def similar(item_id: str, k: int = 10):
        if not 1 <= k <= MAX_K:
            return JSONResponse({"detail": f"k must be between 1 and {MAX_K}"}, status_code=422)
        return {"item_id": item_id, "similar": service.rec.similar(item_id, k)}

    @app.get("/health")
    def health():
        rec = service.rec
        return {"status": "ok", "run_dir": str(service.run_dir), "users": len(rec.catalog.user_ids),
                "items": len(rec.catalog.item_ids)}

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload")
    def reload(body: ReloadRequest):
        old = str(service.run_dir)
        service.reload(Path(body.run_dir) if body.run_dir else None)
        version.remove(old)
        version.labels(str(service.run_dir)).set(1)
        return {"run_dir": str(service.run_dir)}

    return app
