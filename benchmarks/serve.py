"""Latency and throughput of ``polyrec serve`` on MovieLens-100K, loopback only.

Trains a small ID-only MMoE run on the built-in MovieLens-100K default (or serves ``--run DIR``),
starts ``polyrec serve`` in its own process on a free loopback port, then:

- 1 client: ``--requests`` sequential ``POST /recommend`` (k=10, random known users) → p50/p99 ms;
- 8 clients: the same number of requests from 8 threads at once → requests per second.

    python benchmarks/serve.py [--run DIR] [--requests 1000]

Writes DIR/serve.json (``"ml100k": {"p50_ms", "p99_ms", "qps_8_clients"}``) and prints it.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from polyrec.cli import DEFAULT_CONFIG
from polyrec.config import Config
from polyrec.recommender import MultiTaskRecommender


def train_run(folder: Path) -> Path:
    config = Config.from_yaml(DEFAULT_CONFIG, ["text=null", "train.max_epochs=2", "train.progress=false"])
    return MultiTaskRecommender(config).fit().save(folder / "run")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"polyrec serve exited with code {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"polyrec serve did not answer {url}/health within {seconds:.0f} s")


def timed_requests(url: str, users: list[str], clients: int) -> tuple[np.ndarray, float]:
    """Per-request latencies (s) and the wall time of all of them, from ``clients`` threads."""
    def one(client: httpx.Client, user: str) -> float:
        start = time.perf_counter()
        response = client.post(f"{url}/recommend", json={"user": user, "k": 10})
        response.raise_for_status()
        return time.perf_counter() - start

    chunks = [users[c::clients] for c in range(clients)]

    def worker(chunk: list[str]) -> list[float]:
        with httpx.Client(timeout=30) as client:
            return [one(client, u) for u in chunk]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for part in pool.map(worker, chunks) for t in part]
    return np.array(latencies), time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a run directory to serve (default: train a small one)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or train_run(Path(tmp))
        users = json.loads((run / "catalog.json").read_text())["user_ids"]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "polyrec", "serve", str(run), "--port", str(port)],
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            wait_until_up(url, server)
            rng = np.random.default_rng(0)
            timed_requests(url, list(rng.choice(users, 50)), 1)                   # warm-up
            one, _ = timed_requests(url, list(rng.choice(users, args.requests)), 1)
            _, wall = timed_requests(url, list(rng.choice(users, args.requests)), 8)
        finally:
            server.terminate()
            server.wait(30)
    result = {"ml100k": {"p50_ms": float(np.percentile(one, 50) * 1000), "p99_ms": float(np.percentile(one, 99) * 1000),
                         "qps_8_clients": args.requests / wall, "requests": args.requests,
                         "model": "MMoE, IDs only, k=10, 1,682 items", "cores": os.cpu_count()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
