"""Weighting methods on "ml100k-mt" with three tasks (watch, like, rating): quality as Δm over
single-task models, and time per training step relative to static (equal) weighting.

    python benchmarks/weighting.py [--methods static,uncertainty,...] [--archs mmoe,ple]
                                   [--seeds 2024,2025,2026] [--max-epochs N] [--out DIR]

Δm (Maninis et al. 2019; Liu et al. 2022) = mean over tasks of the relative improvement
over the single-task model, sign-flipped for lower-is-better metrics (RMSE), in percent:
watch AUC, like AUC (on watched rows) and rating RMSE (on watched rows); the baseline is
the mean of the single-task runs over the same seeds. Each run is written to
DIR/weighting.json as it finishes, and runs already there are skipped (re-running resumes).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from common import flat_metrics, load_prepared, protocol_config, quickstart_config, training_steps

from polyrec.config import Config
from polyrec.data.dataset import PreparedData
from polyrec.recommender import MultiTaskRecommender
from polyrec.weighting import WEIGHTINGS

METRICS = [("watch", "auc", +1), ("like", "auc", +1), ("rating", "rmse", -1)]  # +1: higher is better


def delta_m(metrics: dict, baseline: dict) -> float:
    return 100 * statistics.mean(sign * (metrics[f"{t}_{m}"] - baseline[f"{t}_{m}"]) / baseline[f"{t}_{m}"]
                                 for t, m, sign in METRICS)


def run_quality(cfg: Config, data: PreparedData) -> dict:
    start = time.perf_counter()
    rec = MultiTaskRecommender(cfg).fit_prepared(data)
    seconds = time.perf_counter() - start
    weights = torch.tensor(rec.result.step_weights)
    return {"test": flat_metrics(rec.evaluate(ranking=True), cfg), "epochs": rec.result.epochs,
            "best_epoch": rec.result.best_epoch, "train_seconds": round(seconds, 1),
            "mean_weight": dict(zip(rec.objective.names, weights.mean(0).tolist())),
            "final_weight": dict(zip(rec.objective.names, weights[-50:].mean(0).tolist()))}


def step_seconds(cfg: Config, data: PreparedData, steps: int = 60) -> float:
    """Median seconds per training step (forward, weighting's backward, optimizer step)."""
    return statistics.median(training_steps(cfg, data, steps))


def run_speed(base: Config, data: PreparedData, methods: list[str], archs: list[str], rounds: int = 4) -> dict:
    """Methods alternate within each round so machine noise hits all of them alike; the first
    round only warms the process up."""
    times = {(m, a): [] for m in methods for a in archs}
    for round_ in range(rounds):
        for arch in archs:
            for method in methods:
                cfg = base.with_overrides([f"model.arch={arch}", f"weighting.method={method}"])
                seconds = step_seconds(cfg, data)
                if round_:
                    times[method, arch].append(seconds)
    out = {}
    for arch in archs:
        static = statistics.median(times["static", arch])
        for method in methods:
            median = statistics.median(times[method, arch])
            out.setdefault(method, {})[arch] = {"step_ms": round(1000 * median, 2),
                                                "step_time_ratio": round(median / static, 3)}
            print(f"speed {arch:>5} {method:>12}: {1000 * median:6.1f} ms/step  {median / static:.2f}x static",
                  flush=True)
    return out


def single_task_baseline(runs: dict) -> dict | None:
    singles = [r["test"] for key, r in runs.items() if key.startswith("single/")]
    if not singles:
        return None
    return {"test": {k: statistics.mean(s[k] for s in singles) for k in singles[0]}, "seeds": len(singles)}


def summarize(runs: dict, speed: dict, baseline: dict, methods: list[str], archs: list[str]) -> dict:
    summary = {}
    for method in methods:
        for arch in archs:
            done = [r for key, r in runs.items() if key.startswith(f"{method}/{arch}/")]
            if not done:
                continue
            deltas = [delta_m(r["test"], baseline["test"]) for r in done]
            summary.setdefault(method, {})[arch] = {
                "delta_m_mean": round(statistics.mean(deltas), 3),
                "delta_m_std": round(statistics.stdev(deltas), 3) if len(deltas) > 1 else None,
                "step_time_ratio": speed.get(method, {}).get(arch, {}).get("step_time_ratio"),
                "test": {k: round(statistics.mean(r["test"][k] for r in done), 4) for k in done[0]["test"]},
                "seeds": len(done)}
    return summary


def markdown(summary: dict, baseline: dict, methods: list[str], archs: list[str]) -> str:
    base = baseline["test"]
    lines = ["| method | arch | Δm % (mean ± std) | watch AUC | like AUC | rating RMSE | watch NDCG@10 | step time × static | seeds |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| single-task | — | 0 (baseline) | {base['watch_auc']:.4f} | {base['like_auc']:.4f} | "
             f"{base['rating_rmse']:.4f} | {base['watch_ndcg@10']:.4f} | — | {baseline['seeds']} |"]
    for arch in archs:
        for method in methods:
            row = summary.get(method, {}).get(arch)
            if row is None:
                continue
            std = f" ± {row['delta_m_std']:.2f}" if row["delta_m_std"] is not None else ""
            ratio = f"{row['step_time_ratio']:.2f}" if row["step_time_ratio"] else "—"
            t = row["test"]
            lines.append(f"| {method} | {arch} | {row['delta_m_mean']:+.2f}{std} | {t['watch_auc']:.4f} | "
                         f"{t['like_auc']:.4f} | {t['rating_rmse']:.4f} | {t['watch_ndcg@10']:.4f} | {ratio} | "
                         f"{row['seeds']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(WEIGHTINGS))
    parser.add_argument("--archs", default="mmoe,ple")
    parser.add_argument("--seeds", default="2024,2025,2026")
    parser.add_argument("--max-epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--no-speed", action="store_true", help="keep the speed numbers already in the JSON")
    args = parser.parse_args()
    methods, archs = args.methods.split(","), args.archs.split(",")
    seeds = [int(s) for s in args.seeds.split(",") if s]  # --seeds "" measures speed only
    unknown = set(methods) - set(WEIGHTINGS)
    if unknown or "static" not in methods:
        sys.exit(f"--methods: unknown {sorted(unknown)}; 'static' must be included (the reference)")

    path = args.out / "weighting.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    runs, speed = saved.get("runs", {}), saved.get("speed", {})
    base = protocol_config(quickstart_config(), "mmoe", args.max_epochs)
    data = load_prepared(base)

    def write() -> None:
        baseline = single_task_baseline(runs)
        summary = summarize(runs, speed, baseline, methods, archs) if baseline else {}
        result = {"protocol": "ml100k-mt, tasks watch/like/rating, text off", "max_epochs": args.max_epochs,
                  "summary": summary, "single_task": baseline, "speed": speed, "runs": runs}
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        if summary:
            (args.out / "weighting.md").write_text(markdown(summary, baseline, methods, archs))

    if not args.no_speed:
        speed = run_speed(base, data, methods, archs)
        write()
    for seed in seeds:
        plan = [("single", "single")] + [(m, a) for a in archs for m in methods]
        for method, arch in plan:
            key = f"{method}/{arch}/{seed}"
            if key in runs:
                continue
            weighting = "static" if method == "single" else method  # single-task: nothing to weigh
            cfg = base.with_overrides([f"model.arch={arch}", f"weighting.method={weighting}", f"train.seed={seed}"])
            runs[key] = run_quality(cfg, data)
            t = runs[key]["test"]
            print(f"{key:>28}: watch {t['watch_auc']:.4f} like {t['like_auc']:.4f} rmse {t['rating_rmse']:.4f} "
                  f"| {runs[key]['epochs']} epochs {runs[key]['train_seconds']:.0f}s", flush=True)
            write()
    write()


if __name__ == "__main__":
    main()
