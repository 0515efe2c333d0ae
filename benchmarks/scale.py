"""Training cost against table size: dense Adam over every embedding row vs sparse updates
(``train.sparse_embeddings``: SparseAdam on the rows a batch reads), and whether sparse updates
change accuracy on small data.

- ``sparse.by_users``: :func:`polyrec.data.synthetic.synthetic_tables` with 100,000 items, the same
  ``--interactions`` per run (so the same rows per epoch) and 10⁵, 10⁶ (and with ``--users`` 10⁷)
  users; MMoE, IDs and fields, one epoch, batch 4096; training samples/s for dense and sparse
  updates, run one after the other in this process after a small warm-up fit.
- ``sparse.ml100k``: the quickstart config without text (MovieLens-100K), 3 seeds, dense vs
  sparse: test AUC per task (mean ± std) and the paired difference.

    python benchmarks/scale.py [--users 100000 1000000 10000000] [--interactions 500000]

Writes benchmarks/results/scale.json (the ``sparse`` key) and prints it.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from polyrec.cli import DEFAULT_CONFIG
from polyrec.config import Config
from polyrec.data.synthetic import SYNTHETIC_CONFIG, synthetic_tables
from polyrec.recommender import MultiTaskRecommender

SEEDS = [2024, 2025, 2026]


def throughput(users: int, interactions: int, sparse: bool) -> dict:
    tables = synthetic_tables(users, 100_000, interactions)
    config = Config.from_dict(SYNTHETIC_CONFIG, [f"train.sparse_embeddings={str(sparse).lower()}"])
    start = time.perf_counter()
    rec = MultiTaskRecommender(config).fit(tables)
    epoch = rec.result.history[0]
    return {"users": users, "sparse": sparse, "rows": round(epoch["samples_per_s"] * epoch["seconds"]),
            "samples_per_s": rec.result.train_samples_per_s, "fit_s": time.perf_counter() - start,
            "valid_click_auc": rec.result.best_valid["click"]["auc"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def ml100k(sparse: bool, seed: int) -> dict:
    config = Config.from_yaml(DEFAULT_CONFIG, ["text=null", "train.progress=false", f"train.seed={seed}",
                                               f"train.sparse_embeddings={str(sparse).lower()}"])
    rec = MultiTaskRecommender(config).fit()
    metrics = rec.evaluate(ranking=False)
    return {name: metrics[name]["auc"] for name in ("watch", "like", "ctcvr")} | \
        {"samples_per_s": rec.result.train_samples_per_s, "best_epoch": rec.result.best_epoch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--interactions", type=int, default=500_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    throughput(10_000, 50_000, False)     # warm-up: the first fit in a process pays for thread pools and allocator
    by_users = []
    for users in args.users:
        for sparse in (False, True):
            by_users.append(throughput(users, args.interactions, sparse))
            print(json.dumps(by_users[-1]), flush=True)
    runs = {mode: [ml100k(mode == "sparse", seed) for seed in SEEDS] for mode in ("dense", "sparse")}
    quality = {}
    for task in ("watch", "like", "ctcvr"):
        dense, sparse = (np.array([r[task] for r in runs[m]]) for m in ("dense", "sparse"))
        quality[task] = {"dense": [float(dense.mean()), float(dense.std())],
                         "sparse": [float(sparse.mean()), float(sparse.std())],
                         "paired_difference": [float((sparse - dense).mean()), float((sparse - dense).std())]}
    result = {"sparse": {"by_users": by_users, "interactions_per_run": args.interactions, "items": 100_000,
                         "ml100k": {"seeds": SEEDS, "test_auc": quality, "runs": runs}}}
    path = args.out / "scale.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**old, **result}, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
