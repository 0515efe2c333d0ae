"""Serving: latency and throughput of ``polyrec serve`` on MovieLens-100K (loopback only), the ONNX
export's parity, a schemathesis fuzz of the HTTP API, and retrieve → rank on a 1,000,000-item
synthetic catalog.

- ``ml100k``: a small ID-only MMoE run on the built-in MovieLens-100K default (or ``--run DIR``) is
  served by ``polyrec serve`` in its own process on a free loopback port; 1 client sends
  ``--requests`` sequential ``POST /recommend`` (k=10, random known users) → p50/p99 ms; 8 clients
  the same number at once → requests per second. ``ml100k_onnx``: the same with ``serve --onnx``.
- ``onnx_max_abs_diff``: ``polyrec export --onnx`` of that run against the model, every task's
  output for every user × 100 random items.
- ``fuzz``: schemathesis generates requests from the server's OpenAPI schema (``--fuzz-examples``
  per operation, check ``not_a_server_error``); the server's own Prometheus counters give the
  number of requests it answered and how many were 5xx.
- ``ann_1m`` (skip with ``--no-ann``): :func:`polyrec.data.synthetic.synthetic_tables` with 20,000
  users, 1,000,000 items and 1,000,000 interactions, one epoch of MMoE with a retrieval head, in
  process: ``recommend`` latency (HNSW candidates + ranking of 200 candidates, k=10) over random
  users; ``recall@100``: the index's 100 nearest items against exact inner-product search over the
  same vectors (200 random users); ``ranker_recall@10``: how much of the ranker's exact top-10 over
  the whole catalog the retrieve → rank list keeps (20 users); ``--compare-libraries`` also builds
  hnswlib and usearch indexes on the same vectors (when installed).

    python benchmarks/serve.py [--run DIR] [--requests 1000] [--no-ann] [--compare-libraries]

Writes benchmarks/results/serve.json and prints it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch

from common import quickstart_config

from polyrec.config import Config
from polyrec.data.synthetic import SYNTHETIC_CONFIG, synthetic_tables
from polyrec.evaluate.evaluator import predict_logits
from polyrec.recommender import MultiTaskRecommender


def train_run(folder: Path) -> Path:
    config = quickstart_config(["text=null", "train.max_epochs=2", "train.progress=false"])
    return MultiTaskRecommender(config).fit().save(folder / "run")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(run: Path, *options: str, seconds: float = 120):
    """``polyrec serve RUN`` in its own process on a free loopback port; yields its URL."""
    url = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen([sys.executable, "-m", "polyrec", "serve", str(run), "--port", url.rsplit(":", 1)[1],
                               *options], env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + seconds
        while True:
            if server.poll() is not None:
                raise SystemExit(f"polyrec serve exited with code {server.returncode}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.time() > deadline:
                    raise SystemExit(f"polyrec serve did not answer {url}/health within {seconds:.0f} s") from None
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(30)


def timed_requests(url: str, users: list[str], clients: int) -> tuple[np.ndarray, float]:
    """Per-request latencies (s) and the wall time of all of them, from ``clients`` threads."""
    def one(client: httpx.Client, user: str) -> float:
        start = time.perf_counter()
        response = client.post(f"{url}/recommend", json={"user": user, "k": 10})
        response.raise_for_status()
        return time.perf_counter() - start

    def worker(chunk: list[str]) -> list[float]:
        with httpx.Client(timeout=30) as client:
            return [one(client, u) for u in chunk]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for part in pool.map(worker, [users[c::clients] for c in range(clients)]) for t in part]
    return np.array(latencies), time.perf_counter() - start


def latency(url: str, users: list[str], requests: int) -> dict:
    rng = np.random.default_rng(0)
    timed_requests(url, list(rng.choice(users, 50)), 1)                   # warm-up
    one, _ = timed_requests(url, list(rng.choice(users, requests)), 1)
    _, wall = timed_requests(url, list(rng.choice(users, requests)), 8)
    return {"p50_ms": float(np.percentile(one, 50) * 1000), "p99_ms": float(np.percentile(one, 99) * 1000),
            "qps_8_clients": requests / wall, "requests": requests}


def answered(url: str) -> dict[str, int]:
    """Requests the server has answered, by status class, from its /metrics counters."""
    counts: dict[str, int] = {}
    for status, value in re.findall(r'polyrec_requests_total\{endpoint="[^"]*",status="(\d)\d\d"\} ([0-9.e+]+)',
                                    httpx.get(f"{url}/metrics").text):
        counts[f"{status}xx"] = counts.get(f"{status}xx", 0) + int(float(value))
    return counts


def fuzz(url: str, examples: int) -> dict:
    before = answered(url)
    done = subprocess.run(["schemathesis", "run", f"{url}/openapi.json", "--checks", "not_a_server_error",
                           "--max-examples", str(examples), "--workers", "1", "--seed", "0"],
                          capture_output=True, text=True)
    after = answered(url)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    summary = [line for line in done.stdout.splitlines() if "passed" in line or "failed" in line][-1:]
    return {"requests": sum(delta.values()), "server_errors": delta.get("5xx", 0), "by_status": delta,
            "schemathesis_exit_code": done.returncode, "schemathesis_summary": summary,
            "examples_per_operation": examples}


def ml100k(args, tmp: Path) -> dict:
    run = args.run or train_run(tmp)
    users = json.loads((run / "catalog.json").read_text())["user_ids"]
    rec = MultiTaskRecommender.load(run)
    onnx = run / "model.onnx"
    if not onnx.exists():
        rec.export_onnx()
    out = {"onnx_max_abs_diff": rec.onnx_difference(onnx)}
    with served(run) as url:
        out["ml100k"] = {**latency(url, users, args.requests), "model": "MMoE, IDs only, k=10, 1,682 items",
                         "cores": os.cpu_count()}
    with served(run, "--onnx") as url:
        out["ml100k_onnx"] = latency(url, users, args.requests)
    fuzzed = shutil.copytree(run, tmp / "fuzzed")    # the fuzzer adds items: never to the run given
    with served(fuzzed) as url:
        out["fuzz"] = fuzz(url, args.fuzz_examples)
    return out


def ann_1m(compare_libraries: bool) -> dict:
    start = time.perf_counter()
    tables = synthetic_tables(20_000, 1_000_000, 1_000_000)
    config = Config.from_dict(SYNTHETIC_CONFIG, ["retrieval={candidates: 200}"])
    rec = MultiTaskRecommender(config).fit(tables)
    out = {"items": len(rec.catalog.item_ids), "users": len(rec.catalog.user_ids),
           "interactions": len(tables.interactions), "train_s": time.perf_counter() - start,
           "valid_click_auc": rec.result.best_valid["click"]["auc"]}
    start = time.perf_counter()
    index = rec.item_index()
    out["index_build_s"] = time.perf_counter() - start
    rng = np.random.default_rng(0)
    users = rng.choice(len(rec.catalog.user_ids), 520, replace=False)
    for u in users[:20]:                                                   # warm-up
        rec.recommend(rec.catalog.user_ids[u], k=10, explain=0)
    times = []
    for u in users[20:]:
        begin = time.perf_counter()
        rec.recommend(rec.catalog.user_ids[u], k=10, explain=0)
        times.append(time.perf_counter() - begin)
    out.update({"p50_ms": float(np.percentile(times, 50) * 1000), "p99_ms": float(np.percentile(times, 99) * 1000),
                "requests": len(times)})
    items = rec.model.retrieval_vectors("item")
    queries = rec.model.retrieval_vectors("user", torch.from_numpy(users[:200]))
    exact = (queries @ items.T).topk(100, dim=1).indices
    found = index.search(queries, 100)
    out["recall@100"] = float(np.mean([len(set(f.tolist()) & set(e.tolist())) / 100 for f, e in zip(found, exact)]))
    kept = []
    for u in users[:20]:
        seen = torch.from_numpy(rec.history.get(int(u), np.zeros(0, np.int64)))
        every = torch.arange(len(rec.catalog.item_ids))
        scores = rec.objective.scores(predict_logits(rec.model, torch.full_like(every, int(u)), every, batch_size=65536))
        ranking = scores[rec._rank_by()].index_fill(0, seen, -np.inf)
        best = {rec.catalog.item_ids[i] for i in ranking.topk(10).indices.tolist()}
        got = {i["item_id"] for i in rec.recommend(rec.catalog.user_ids[u], k=10, explain=0)}
        kept.append(len(best & got) / 10)
    out["ranker_recall@10"] = float(np.mean(kept))
    out["index"] = f"faiss HNSW, M=32, efConstruction=80, efSearch={config.retrieval.ef_search}, 200 candidates"
    if compare_libraries:
        out["libraries"] = compare(items, queries, exact)
    return out


def compare(items: torch.Tensor, queries: torch.Tensor, exact: torch.Tensor) -> dict:
    """Build time, single-query latency and recall@100 of HNSW in faiss, hnswlib and usearch
    (M=32, construction breadth 80, search breadth 256), where installed."""
    x, q = items.numpy(), queries.numpy()
    builders = {}
    with contextlib.suppress(ImportError):
        import faiss

        def faiss_index():
            index = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction, index.hnsw.efSearch = 80, 256
            index.add(x)
            return lambda v: index.search(v, 100)[1]
        builders["faiss"] = faiss_index
    with contextlib.suppress(ImportError):
        import hnswlib

        def hnswlib_index():
            index = hnswlib.Index(space="ip", dim=x.shape[1])
            index.init_index(len(x), ef_construction=80, M=32)
            index.add_items(x)
            index.set_ef(256)
            return lambda v: index.knn_query(v, k=100)[0]
        builders["hnswlib"] = hnswlib_index
    with contextlib.suppress(ImportError):
        from usearch.index import Index

        def usearch_index():
            index = Index(ndim=x.shape[1], metric="ip", connectivity=32, expansion_add=80, expansion_search=256)
            index.add(np.arange(len(x)), x)
            return lambda v: index.search(v, 100).keys
        builders["usearch"] = usearch_index
    out = {}
    for name, build in builders.items():
        start = time.perf_counter()
        search = build()
        built = time.perf_counter() - start
        times, recall = [], []
        for j in range(len(q)):
            begin = time.perf_counter()
            found = np.asarray(search(q[j:j + 1])).ravel()
            times.append(time.perf_counter() - begin)
            recall.append(len(set(found.tolist()) & set(exact[j].tolist())) / 100)
        out[name] = {"build_s": built, "p50_ms": float(np.percentile(times, 50) * 1000),
                     "p99_ms": float(np.percentile(times, 99) * 1000), "recall@100": float(np.mean(recall))}
        print(name, out[name], flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a run directory to serve (default: train a small one)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--fuzz-examples", type=int, default=100, help="schemathesis examples per operation")
    parser.add_argument("--no-ann", action="store_true", help="skip the 1,000,000-item benchmark (~10 min)")
    parser.add_argument("--compare-libraries", action="store_true", help="also time hnswlib and usearch")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = ml100k(args, Path(tmp))
    print(json.dumps(result, indent=1), flush=True)
    if not args.no_ann:
        result["ann_1m"] = ann_1m(args.compare_libraries)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
