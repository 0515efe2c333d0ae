"""Training past one process and one table size, in parts (``--parts``, default all):

- ``sparse``: training cost against table size, dense Adam over every embedding row vs sparse
  updates (``train.sparse_embeddings``: SparseAdam on the rows a batch reads), and whether sparse
  updates change accuracy on small data.
- ``ddp``: ``torchrun --nproc_per_node 2 -m polyrec train`` (gloo, one thread per process) against
  one process (two threads) with the same global batch, on the ml100k-mt reference rows (MMoE,
  configs/ml100k_mt.yaml): the largest absolute difference of any test metric, per weighting
  method, with dropout off and without BatchNorm (each process would normalise its own rows and
  draw its own dropout), and with the config as it is (static weighting).
- ``resume``: the same config with ``train.checkpoint_every=50``, run whole and killed (SIGKILL)
  in the middle of its third epoch then continued with ``polyrec train --resume``.
- ``streaming``: ``data.streaming`` (training rows read from Parquet in every epoch) at 1M, 10M
  and 50M training samples per epoch (``--stream-rows``), and in memory at the smallest size.
- ``bf16``: ``train.precision=bf16`` against fp32 on the same rows, 3 seeds (``--bf16-seeds``)
  alternating in one process: training samples/s ratio and test AUC differences.

Part ``streaming``: :func:`polyrec.data.synthetic.write_synthetic_split` with 100,000 users and
50,000 items writes the training interactions as Parquet files of 200,000 rows; a size of N
samples is the first N/5 interactions (4 negatives per interaction drawn on the fly), so every
size has the same tables and vocabularies. Each run is a fresh process (MMoE, IDs and fields,
one epoch, batch 4096, 2 threads, default shuffle buffer): training samples/s and the process's
peak RSS. In memory, the smallest size's rows are read whole (data.streaming false).

Part ``sparse``:

- ``sparse.by_users``: :func:`polyrec.data.synthetic.synthetic_tables` with 100,000 items, the same
  ``--interactions`` per run (so the same rows per epoch) and 10⁵, 10⁶ (and with ``--users`` 10⁷)
  users; MMoE, IDs and fields, one epoch, batch 4096; training samples/s for dense and sparse
  updates, run one after the other in this process after a small warm-up fit.
- ``sparse.ml100k``: the quickstart config without text (MovieLens-100K), 3 seeds, dense vs
  sparse: test AUC per task (mean ± std) and the paired difference.

    python benchmarks/scale.py [--parts sparse ddp resume streaming bf16] [--users 100000 1000000 10000000]
                               [--interactions 500000] [--stream-rows 1000000 10000000 50000000]

Writes the parts' keys into benchmarks/results/scale.json (other keys kept) and prints them.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import quickstart_config

from polyrec.config import Config
from polyrec.data.synthetic import SYNTHETIC_CONFIG, synthetic_tables, write_synthetic_split
from polyrec.recommender import MultiTaskRecommender

SEEDS = [2024, 2025, 2026]
MT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ml100k_mt.yaml"


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
    config = quickstart_config(["text=null", "train.progress=false", f"train.seed={seed}",
                                               f"train.sparse_embeddings={str(sparse).lower()}"])
    rec = MultiTaskRecommender(config).fit()
    metrics = rec.evaluate(ranking=False)
    return {name: metrics[name]["auc"] for name in ("watch", "like", "ctcvr")} | \
        {"samples_per_s": rec.result.train_samples_per_s, "best_epoch": rec.result.best_epoch}


def sparse_part(users_list: list[int], interactions: int) -> dict:
    throughput(10_000, 50_000, False)     # warm-up: the first fit in a process pays for thread pools and allocator
    by_users = []
    for users in users_list:
        for sparse in (False, True):
            by_users.append(throughput(users, interactions, sparse))
            print(json.dumps(by_users[-1]), flush=True)
    runs = {mode: [ml100k(mode == "sparse", seed) for seed in SEEDS] for mode in ("dense", "sparse")}
    quality = {}
    for task in ("watch", "like", "ctcvr"):
        dense, sparse = (np.array([r[task] for r in runs[m]]) for m in ("dense", "sparse"))
        quality[task] = {"dense": [float(dense.mean()), float(dense.std())],
                         "sparse": [float(sparse.mean()), float(sparse.std())],
                         "paired_difference": [float((sparse - dense).mean()), float((sparse - dense).std())]}
    return {"by_users": by_users, "interactions_per_run": interactions, "items": 100_000,
            "ml100k": {"seeds": SEEDS, "test_auc": quality, "runs": runs}}


def train_command(out: Path, sets: list[str], processes: int = 1) -> list[str]:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    return [sys.executable, *launcher, "-m", "polyrec", "train", "-c", str(MT_CONFIG), "-o", str(out),
            *[a for s in ["train.progress=false", *sets] for a in ("--set", s)]]


def train_metrics(out: Path, sets: list[str], processes: int = 1) -> dict:
    """A `polyrec train` run of the ml100k-mt config in fresh processes; its metrics.json."""
    subprocess.run(train_command(out, sets, processes), check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": str(2 // processes)})
    return json.loads((out / "metrics.json").read_text())


def test_values(metrics: dict) -> dict[str, float]:
    """Every test metric of a run (per task and joint; ranking included), flat."""
    return {f"{task}.{name}": value for task, values in metrics["test"].items() if isinstance(values, dict)
            for name, value in values.items() if isinstance(value, float)}


def max_difference(a: dict, b: dict) -> float:
    a, b = test_values(a), test_values(b)
    return max(abs(a[k] - b[k]) for k in a.keys() & b.keys())


def step_losses(run: Path) -> np.ndarray:
    return np.array([list(json.loads(line)["loss"].values()) for line in (run / "train_steps.jsonl").open()])


def ddp_part(folder: Path) -> dict:
    """2 processes against 1 with the same global batch: the largest test-metric difference and
    the largest difference of the first 50 steps' task losses (float32 sums split across processes
    round differently, and training over hundreds of steps amplifies that). One process with 1
    thread against 2 threads shows what one process alone does (deterministic here)."""
    exact = ["model.dropout=0", "model.batch_norm=false"]
    methods = []
    for method, sets in [("static", exact), ("pcgrad", exact), ("multibalance", exact), ("static", [])]:
        sets = [*sets, f"weighting.method={method}"]
        key = f"{method}{'' if sets[0] == exact[0] else '+batch_norm+dropout'}"
        one = train_metrics(folder / f"{key}-1", [*sets, "train.threads=2"])
        two = train_metrics(folder / f"{key}-2", [*sets, "train.threads=1"], processes=2)
        first = min(50, len(step_losses(folder / f"{key}-1")))
        methods.append({"method": key, "max_abs_metric_diff": max_difference(one, two),
                        "first_50_steps_max_abs_loss_diff": float(np.abs(step_losses(folder / f"{key}-1")[:first] -
                                                                         step_losses(folder / f"{key}-2")[:first]).max()),
                        "epochs": [one["epochs"], two["epochs"]],
                        "samples_per_s": [one["train_samples_per_s"], two["train_samples_per_s"]],
                        "test_watch_auc": [one["test"]["watch"]["auc"], two["test"]["watch"]["auc"]]})
        print(json.dumps(methods[-1]), flush=True)
    sets = [*exact, "weighting.method=static", "train.threads=1"]
    threads = train_metrics(folder / "static-1-thread", sets)
    control = {"max_abs_metric_diff": max_difference(threads, json.loads((folder / "static-1" / "metrics.json").read_text())),
               "first_50_steps_max_abs_loss_diff": float(np.abs(step_losses(folder / "static-1-thread")[:50] -
                                                                step_losses(folder / "static-1")[:50]).max())}
    exact_runs = [m for m in methods if "batch_norm" not in m["method"]]
    return {"max_abs_metric_diff": max(m["max_abs_metric_diff"] for m in exact_runs),
            "methods": [m["method"] for m in exact_runs], "runs": methods,
            "one_process_1_vs_2_threads": control, "processes": 2, "backend": "gloo",
            "settings": "ml100k-mt, MMoE, global batch 1024; exact runs without dropout and BatchNorm"}


def resume_part(folder: Path) -> dict:
    from polyrec.rundir import CHECKPOINT
    from polyrec.train.checkpoint import load_checkpoint

    sets = ["train.checkpoint_every=50"]
    whole = train_metrics(folder / "whole", sets)
    killed = folder / "killed"
    proc = subprocess.Popen(train_command(killed, sets), stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "2"})
    log = None
    while proc.poll() is None:   # kill in the middle of the third epoch, after one of its checkpoints
        logs = list(folder.glob(".killed.partial-*/train_log.jsonl"))
        if logs and logs[0].read_text().count("\n") >= 2:
            log = logs[0]
            written = (log.parent / CHECKPOINT).stat().st_mtime
            while proc.poll() is None and (log.parent / CHECKPOINT).stat().st_mtime == written:
                time.sleep(0.01)
            time.sleep(1)
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert log is not None and not killed.exists(), "the run ended before it was killed"
    position = load_checkpoint(log.parent / CHECKPOINT)["loop"]
    subprocess.run([sys.executable, "-m", "polyrec", "train", "--resume", str(killed)], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "2"})
    resumed = json.loads((killed / "metrics.json").read_text())
    same_weights = (killed / "model.safetensors").read_bytes() == (folder / "whole" / "model.safetensors").read_bytes()
    return {"identical": same_weights and test_values(resumed) == test_values(whole),
            "max_abs_metric_diff": max_difference(whole, resumed), "identical_weights": same_weights,
            "killed_at": {"epoch": position["epoch"] + 1, "step_in_epoch": position["step"]},
            "epochs": [whole["epochs"], resumed["epochs"]], "settings": "ml100k-mt, MMoE, checkpoint every 50 steps, 2 threads"}


def bf16_part(seeds: list[int], epochs: int | None) -> dict:
    runs = {"fp32": [], "bf16": []}
    for seed in seeds:
        for precision in runs:
            config = Config.from_yaml(MT_CONFIG, ["train.progress=false", f"train.seed={seed}",
                                                  f"train.precision={precision}",
                                                  *([f"train.max_epochs={epochs}"] if epochs else [])])
            rec = MultiTaskRecommender(config).fit()
            metrics = rec.evaluate(ranking=False)
            runs[precision].append({**{t: metrics[t]["auc"] for t in ("watch", "like", "ctcvr")},
                                    "samples_per_s": rec.result.train_samples_per_s, "best_epoch": rec.result.best_epoch})
            print(precision, json.dumps(runs[precision][-1]), flush=True)
    ratio = [b["samples_per_s"] / f["samples_per_s"] for f, b in zip(runs["fp32"], runs["bf16"])]
    diff = {t: [b[t] - f[t] for f, b in zip(runs["fp32"], runs["bf16"])] for t in ("watch", "like", "ctcvr")}
    return {"samples_per_s_ratio": [float(np.mean(ratio)), float(np.std(ratio))],
            "test_auc_difference": {t: [float(np.mean(d)), float(np.std(d))] for t, d in diff.items()},
            "seeds": seeds, "max_epochs": epochs or config.train.max_epochs, "runs": runs,
            "settings": "ml100k-mt, MMoE, 2 threads, bf16 - fp32 per seed"}


STREAM_USERS, STREAM_ITEMS, FILE_ROWS = 100_000, 50_000, 200_000


def stream_run(paths: dict, streaming: bool) -> dict:
    """One epoch on the synthetic split ``paths`` (run in a fresh process: peak RSS is its own)."""
    data = {**SYNTHETIC_CONFIG["data"], "interactions": None, **paths, "streaming": streaming,
            "split": {"method": "column"}}
    config = Config.from_dict({**SYNTHETIC_CONFIG, "data": data, "train": {**SYNTHETIC_CONFIG["train"], "threads": 2}})
    start = time.perf_counter()
    rec = MultiTaskRecommender(config).fit()
    epoch = rec.result.history[0]
    return {"streaming": streaming, "rows": round(epoch["samples_per_s"] * epoch["seconds"]),
            "samples_per_s": epoch["samples_per_s"], "fit_s": time.perf_counter() - start,
            "valid_click_auc": rec.result.best_valid["click"]["auc"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def streaming_part(folder: Path, sizes: list[int]) -> dict:
    interactions = max(sizes) // 5
    paths = write_synthetic_split(folder, STREAM_USERS, STREAM_ITEMS, interactions, 20_000,
                                  rows_per_file=FILE_ROWS)
    files = sorted(paths["train"].iterdir())
    runs = []

    def run(train: Path, streaming: bool) -> dict:
        job = {k: str(v) for k, v in paths.items()} | {"train": str(train)}
        done = subprocess.run([sys.executable, __file__, "--stream-run", json.dumps(job), str(streaming).lower()],
                              check=True, capture_output=True, text=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
        return runs[-1]

    in_memory = run(files[0], False) if sizes[0] // 5 == FILE_ROWS else None
    streamed = []
    for size in sizes:
        subset = folder / f"train-{size}"   # the first size/5 interactions: links to the first files
        subset.mkdir()
        for file in files[:size // 5 // FILE_ROWS]:
            (subset / file.name).symlink_to(file)
        streamed.append(run(subset, True))
    return {"rows": [r["rows"] for r in streamed], "peak_rss_mb": [r["peak_rss_mb"] for r in streamed],
            "samples_per_s": [r["samples_per_s"] for r in streamed],
            "in_memory_samples_per_s_1m": in_memory and in_memory["samples_per_s"],
            "in_memory_peak_rss_mb_1m": in_memory and in_memory["peak_rss_mb"], "runs": runs,
            "settings": f"synthetic, {STREAM_USERS} users, {STREAM_ITEMS} items, MMoE, batch 4096, 2 threads, "
                        "one epoch, 4 negatives per interaction drawn on the fly"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=["sparse", "ddp", "resume", "streaming", "bf16"],
                        default=["sparse", "ddp", "resume", "streaming", "bf16"])
    parser.add_argument("--stream-rows", type=int, nargs="+", default=[1_000_000, 10_000_000, 50_000_000],
                        help="training samples per epoch of the streaming part (multiples of 1,000,000)")
    parser.add_argument("--stream-run", nargs=2, metavar=("PATHS", "STREAMING"), help=argparse.SUPPRESS)
    parser.add_argument("--users", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--interactions", type=int, default=500_000)
    parser.add_argument("--bf16-seeds", type=int, nargs="+", default=SEEDS)
    parser.add_argument("--bf16-epochs", type=int, default=None, help="train.max_epochs of the bf16 part "
                        "(default: the config's; a CPU without native bfloat16 runs it ~6x slower)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if args.stream_run:
        print(json.dumps(stream_run(json.loads(args.stream_run[0]), args.stream_run[1] == "true")))
        return
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        for part in args.parts:
            if part == "sparse":
                result["sparse"] = sparse_part(args.users, args.interactions)
            elif part == "ddp":
                result["ddp"] = ddp_part(Path(folder) / "ddp")
            elif part == "resume":
                result["resume"] = resume_part(Path(folder) / "resume")
            elif part == "streaming":
                result["streaming"] = streaming_part(Path(folder) / "streaming", sorted(args.stream_rows))
            else:
                result["bf16"] = bf16_part(args.bf16_seeds, args.bf16_epochs)
            print(json.dumps({part: result[part]}, indent=1), flush=True)
    path = args.out / "scale.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**old, **result}, indent=1) + "\n")


if __name__ == "__main__":
    main()
