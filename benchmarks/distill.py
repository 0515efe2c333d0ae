"""Distillation on "ml100k-mt", cold-start variant (10% of movies held out of train and valid):
teacher (the default text-aware MMoE, configs/ml100k.yaml) vs a student distilled from it vs
the same student trained on hard labels only (configs/student.yaml), and the distilled student
whose unlabeled pairs also cover the cold movies (distill.new_items_per_user=20).

    python benchmarks/distill.py [--seeds 2024,2025,2026] [--student configs/student.yaml]
                                 [--set distill.ranking_weight=0] [--out DIR]

Per model: mean test AUC over the binary tasks (watch, like), watch and like NDCG@10 over
the full catalog, watch AUC on the cold movies' test rows, parameters needed at serving time
(frozen language model excluded, its cached embeddings included), the median time to score
one user's whole catalog (1,682 movies, one call, 200 users), and inference samples/s on
the test rows. Writes DIR/distill.json and DIR/distill.md (default DIR: benchmarks/results/).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from common import quickstart_config

from polyrec.cli import STUDENT_CONFIG
from polyrec.data.dataset import prepare
from polyrec.data.sources import load_tables
from polyrec.distill import distill, student_config
from polyrec.evaluate.evaluator import evaluate, predict_logits
from polyrec.recommender import MultiTaskRecommender

MODELS = ("teacher", "student_distilled", "student_plain")
# a second distilled student: the teacher also labels pairs with the cold (new) movies
NEW_ITEMS = ("student_distilled_new_items", ["distill.new_items_per_user=20"])


def measure(rec: MultiTaskRecommender, cold_items, n_timed_users: int = 200) -> dict:
    test = rec.evaluate(ranking=True)
    cold = evaluate(rec.model, rec.objective, rec.test.restrict_items(cold_items), len(rec.catalog.item_ids), [10],
                    ranking=False)
    n_items = len(rec.catalog.item_ids)
    items = torch.arange(n_items)
    times = []
    for user in range(n_timed_users + 10):  # the first 10 warm up
        start = time.perf_counter()
        predict_logits(rec.model, torch.full((n_items,), user % len(rec.catalog.user_ids)), items)
        times.append(time.perf_counter() - start)
    samples = rec.test.samples
    start = time.perf_counter()
    predict_logits(rec.model, samples.user, samples.item)
    rate = len(samples) / (time.perf_counter() - start)
    return {"mean_auc": statistics.mean([test["watch"]["auc"], test["like"]["auc"]]),
            "watch_auc": test["watch"]["auc"], "like_auc": test["like"]["auc"], "ctcvr_auc": test["ctcvr"]["auc"],
            "rating_rmse": test["rating"]["rmse"],
            "ndcg@10": test["ranking"]["watch"]["ndcg@10"], "like_ndcg@10": test["ranking"]["like"]["ndcg@10"],
            "cold_watch_auc": cold["watch"]["auc"], "cold_like_auc": cold["like"]["auc"],
            "params": rec.model.n_serving_parameters(),
            "full_catalog_ms": 1000 * statistics.median(times[10:]), "infer_samples_per_s": rate,
            "valid_mean_auc": rec.result.history[rec.result.best_epoch - 1]["valid_mean_auc"],
            "epochs": rec.result.epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="2024,2025,2026")
    parser.add_argument("--student", type=Path, default=STUDENT_CONFIG)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="student config override")
    parser.add_argument("--max-epochs", type=int, default=None, help="teacher and students (default: configs)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    runs = {m: [] for m in (*MODELS, NEW_ITEMS[0])}
    for seed in [int(s) for s in args.seeds.split(",")]:
        epochs = [f"train.max_epochs={args.max_epochs}"] if args.max_epochs else []
        cfg = quickstart_config(["data.cold_items=0.1", f"train.seed={seed}", "train.progress=false",
                                                *epochs])
        tables = load_tables(cfg.data)
        data = prepare(tables, cfg)
        start = time.perf_counter()
        teacher = MultiTaskRecommender(cfg).fit_prepared(data)
        seconds = {"teacher": time.perf_counter() - start}
        student_cfg = student_config(cfg, args.student, args.overrides + epochs)
        start = time.perf_counter()
        distilled = distill(teacher, student_cfg, tables)
        seconds["student_distilled"] = time.perf_counter() - start
        start = time.perf_counter()
        plain = MultiTaskRecommender(student_cfg).fit_prepared(prepare(tables, student_cfg))
        seconds["student_plain"] = time.perf_counter() - start
        start = time.perf_counter()
        new_items = distill(teacher, student_cfg.with_overrides(NEW_ITEMS[1]), tables)
        seconds[NEW_ITEMS[0]] = time.perf_counter() - start
        for name, rec in zip(runs, (teacher, distilled, plain, new_items)):
            runs[name].append({**measure(rec, data.cold_items), "seed": seed, "train_seconds": seconds[name]})
            r = runs[name][-1]
            print(f"seed {seed} {name:>17}: mean AUC {r['mean_auc']:.4f} ndcg@10 {r['ndcg@10']:.4f} cold watch "
                  f"{r['cold_watch_auc']:.4f} | {r['params']:,} params {r['full_catalog_ms']:.2f} ms/catalog "
                  f"{r['infer_samples_per_s']:,.0f} samples/s | {r['epochs']} epochs {seconds[name]:.0f}s", flush=True)
        write(args, runs)


def write(args, runs: dict) -> None:
    summary = {}
    for name, rows in runs.items():
        keys = [k for k in rows[0] if k != "seed"]
        summary[name] = {k: statistics.mean(r[k] for r in rows) for k in keys}
        summary[name].update({f"{k}_std": statistics.stdev(r[k] for r in rows) if len(rows) > 1 else None
                              for k in ("mean_auc", "ndcg@10", "cold_watch_auc")})
    t, d, p = (summary[m] for m in MODELS)
    checks = {"auc_kept_of_teacher": d["mean_auc"] / t["mean_auc"],
              "beats_plain_on_mean_auc": d["mean_auc"] > p["mean_auc"],
              "beats_plain_on_ndcg@10": d["ndcg@10"] > p["ndcg@10"],
              "speedup_full_catalog": t["full_catalog_ms"] / d["full_catalog_ms"],
              "params_ratio": t["params"] / d["params"]}
    result = {**summary, "checks": checks, "protocol": "ml100k-mt cold-start (10% of movies), tasks watch/like/rating",
              "student_config": str(args.student), "overrides": args.overrides,
              "seeds": [r["seed"] for r in runs["teacher"]], "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distill.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["| model | mean AUC | watch AUC | like AUC | watch NDCG@10 | like NDCG@10 | cold watch AUC | "
             "serving params | full catalog ms | infer samples/s |", "|---" * 10 + "|"]
    for name in runs:
        m = summary[name]
        std = lambda k: f" ± {m[k + '_std']:.4f}" if m[k + "_std"] is not None else ""  # noqa: E731
        lines.append(f"| {name} | {m['mean_auc']:.4f}{std('mean_auc')} | {m['watch_auc']:.4f} | {m['like_auc']:.4f} | "
                     f"{m['ndcg@10']:.4f}{std('ndcg@10')} | {m['like_ndcg@10']:.4f} | "
                     f"{m['cold_watch_auc']:.4f}{std('cold_watch_auc')} | {m['params']:,.0f} | "
                     f"{m['full_catalog_ms']:.2f} | {m['infer_samples_per_s']:,.0f} |")
    (args.out / "distill.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
