"""What the quickstart config's parts are worth, on ``configs/ml100k.yaml`` (MovieLens-100K with
item and user text, a behaviour history, per-row losses), 3 training seeds each on the same rows:
the config as it is (``default``), without the user-history text (``no_history_text``: the mean
text of the user's last 20 earlier movies), without any language-model text (``no_text``), and
the config before issue 14 (``per_task_no_history``: per-task losses, no behaviour history).

Selection: validation mean AUC over the binary tasks (what training selects epochs by). Test
metrics are reported for every variant, and for each variant the paired user-level bootstrap CI
of test watch NDCG@10 of ``default`` minus it (same seeds).

    python benchmarks/quickstart_defaults.py [--jobs 2]

Writes benchmarks/results/quickstart_defaults.{json,md}.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from common import flat_metrics, load_prepared, paired_bootstrap, run_all, weighted_mean
from polyrec.cli import DEFAULT_CONFIG
from polyrec.config import Config
from polyrec.evaluate.evaluator import evaluate_ranking, mean_auc
from polyrec.recommender import MultiTaskRecommender
from polyrec.text.inputs import encode_text

SEEDS = [2024, 2025, 2026]
VARIANTS = {"default": [], "no_history_text": ["text.user_history=0"], "no_text": ["text=null"],
            "per_task_no_history": ["train.loss_reduction=per_task", "history=null"]}


def fit(cfg: Config, data, key: str) -> dict:
    rec = MultiTaskRecommender(cfg).fit_prepared(data)
    per_user: dict = {}
    test = rec.evaluate()
    evaluate_ranking(rec.model, rec.objective, rec.test, len(rec.catalog.item_ids), [10], per_user=per_user)
    return {"valid_mean_auc": mean_auc(rec.result.best_valid, rec.objective),
            "valid": {t: rec.result.best_valid[t]["auc"] for t in ("watch", "like", "ctcvr")},
            "test": flat_metrics(test, cfg), "best_epoch": rec.result.best_epoch,
            "watch_ndcg_by_user": {"user": per_user["watch"]["user"].tolist(),
                                   "ndcg": per_user["watch"]["ndcg@10"].tolist()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    base = Config.from_yaml(DEFAULT_CONFIG, ["train.progress=false", "history={}"])
    data = load_prepared(base)     # with histories: variants without a history section ignore them
    data = data.with_text(encode_text(base.text, data.user_table, data.item_table, False))
    todo = [(f"{name}/{seed}", Config.from_yaml(DEFAULT_CONFIG, ["train.progress=false", f"train.seed={seed}",
                                                                 *overrides]))
            for name, overrides in VARIANTS.items() for seed in SEEDS]
    runs: dict[str, dict] = {}

    def done(key, result):
        runs[key] = result
        print(key, json.dumps({"valid_mean_auc": result["valid_mean_auc"], **result["valid"]}), flush=True)

    run_all(fit, todo, data, args.jobs, done)
    summary = {}
    for name in VARIANTS:
        rows = [runs[f"{name}/{seed}"] for seed in SEEDS]
        stat = lambda values: [float(np.mean(values)), float(np.std(values))]  # noqa: E731
        summary[name] = {"valid_mean_auc": stat([r["valid_mean_auc"] for r in rows]),
                         **{f"valid_{t}_auc": stat([r["valid"][t] for r in rows]) for t in ("watch", "like", "ctcvr")},
                         **{f"test_{m}": stat([r["test"][m] for r in rows])
                            for m in ("watch_auc", "like_auc", "ctcvr_auc", "watch_ndcg@10", "like_ndcg@10")}}
    chosen = max(VARIANTS, key=lambda name: summary[name]["valid_mean_auc"][0])
    ndcg = lambda name: [weighted_mean(np.array(runs[f"{name}/{s}"]["watch_ndcg_by_user"]["ndcg"]),  # noqa: E731
                                       np.array(runs[f"{name}/{s}"]["watch_ndcg_by_user"]["user"])) for s in SEEDS]
    gains = {name: paired_bootstrap(ndcg(name), ndcg("default"), len(data.catalog.user_ids))
             for name in VARIANTS if name != "default"}
    result = {"config": DEFAULT_CONFIG.name, "seeds": SEEDS, "chosen_on_validation": chosen, "summary": summary,
              "default_minus_variant_test_watch_ndcg@10": gains}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quickstart_defaults.json").write_text(json.dumps(result, indent=1) + "\n")
    names = list(summary[chosen])
    table = ["| variant | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    table += [f"| {name} | " + " | ".join(f"{v[0]:.4f} ± {v[1]:.4f}" for v in summary[name].values()) + " |"
              for name in summary]
    table += ["", f"chosen on validation: {chosen}", "", "test watch NDCG@10, default minus variant (paired user-level "
              "bootstrap 95 % interval, 1,000 resamples):", ""]
    table += [f"- {name}: {d:+.4f} [{lo:+.4f}, {hi:+.4f}]" for name, (d, lo, hi) in gains.items()]
    (args.out / "quickstart_defaults.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
