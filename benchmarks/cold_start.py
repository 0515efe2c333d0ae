"""Cold start on protocol "ml100k-mt": do new items get scored well, and do they reach a top-10?

10 % of the movies (seeded, ``data.cold_items=0.1``) are held out of train and valid entirely, so
their test rows are items the model has never seen. MMoE on the reference rows' features, with
item-ID dropout 0.1 in every variant (so an unknown ID is something the model has learned about):

    id            IDs and side features: a new item is the learned "unknown" ID plus its year and genre
    text          + item text (frozen language model, adaptor), still the "unknown" ID
    text+dropout  + an ID generator from content trained with the tasks (DropoutNet; cold_start.method dropout)
    text+align    + an ID generator fitted to the trained ID embeddings (cold_start.method align)

Per run, on the test split: all rows; the cold items' rows (AUC, and full-catalog Recall@10 with
the cold items' interactions as ground truth); the warm items' rows; items with 1–5 training
interactions; a "new-arrivals shelf" (Recall@10 ranking the held-out movies only); and the
new-arrivals policy of ``recommend`` (``new_slots`` of the 10 reserved for new items whose score
clears ``new_threshold``) as a trade-off of overall and cold Recall@10.

``--curve`` runs the learning curve instead: 10/25/50/100 % of each user's training rows (seeded;
interactions and sampled negatives alike, at least one interaction per user), the same valid and test rows,
for the single-task ID model, the multi-task ID model and the multi-task text model.

    python benchmarks/cold_start.py [--variants id,text,text+dropout,text+align] [--seeds 2024,2025,2026]
                                    [--jobs 2] [--curve | --update | --ceilings] [--out DIR]

``--ceilings`` measures what ranking cold items by their attractiveness alone can reach (no
training of the model): an *oracle* that knows each held-out movie's number of test-period
interactions (leaky on purpose: no content-based estimate can do better at ranking by
popularity), and a *content* estimate of popularity, a ridge regression of the warm movies'
log training interactions on their year, genres and language-model vector (ridge strength
chosen on a fifth of the warm movies held out). Both through the library's own evaluation.

``--update`` measures ``rec.update`` (new items' first interactions) on the default generator:
3 positive test rows of each cold item (seeded) are given to the trained model, and the rest of
the cold items' test rows are scored before and after.

Writes DIR/cold_start.json (``best``: the default generator, text+dropout; ``learning_curve``),
DIR/cold_start.md and, with --curve, DIR/learning_curve.png.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import flat_metrics, protocol_config, run_all, select_tasks

from polyrec.config import Config
from polyrec.data.dataset import PreparedData, prepare
from polyrec.data.sources import load_tables
from polyrec.evaluate.evaluator import evaluate, evaluate_pointwise, evaluate_ranking
from polyrec.objective import Objective
from polyrec.recommender import MultiTaskRecommender
from polyrec.serve.rerank import Exposure
from polyrec.text.inputs import encode_text

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ml100k_mt.yaml"
VARIANTS = {"id": ("mmoe", None), "text": ("mmoe+text", None), "text+dropout": ("mmoe+text", "dropout"),
            "text+align": ("mmoe+text", "align")}
BEST = "text+dropout"     # the default method, named before the runs (no cold rows exist to validate on)
CURVE_MODELS = {"single-task IDs": "single", "multi-task IDs": "mmoe", "multi-task text": "mmoe+text"}
FRACTIONS = (0.1, 0.25, 0.5, 1.0)
REVEAL = 3                                  # first interactions per cold item given to rec.update
POLICIES = ((1, 0.0), (2, 0.0), (2, 0.5))   # (new_slots, new_threshold) of the 10
SUMMARY = {"all": ["watch_auc", "like_auc", "ctcvr_auc", "watch_recall@10", "watch_ndcg@10"],
           "cold": ["watch_auc", "like_auc", "ctcvr_auc", "watch_recall@10"], "warm": ["watch_auc", "like_auc"],
           "rare": ["watch_auc", "like_auc"], "shelf": ["watch_recall@10"]}


def variant_config(base: Config, variant: str, seed: int, max_epochs: int, extra: list[str] = ()) -> Config:
    model, method = VARIANTS[variant]
    overrides = [f"train.seed={seed}", "model.oov_dropout={item_id: 0.1}"]
    if method:
        overrides.append(f"cold_start={{method: {method}}}")
        overrides += [o for o in extra if o.startswith("cold_start.")]
    return protocol_config(base, model, max_epochs).with_overrides(overrides)


def run_cold(cfg: Config, data: PreparedData, key: str) -> dict:
    rec = MultiTaskRecommender(cfg).fit_prepared(data)
    model, objective, test = rec.model, rec.objective, data.test
    n = len(data.catalog.item_ids)
    cold = torch.zeros(n, dtype=torch.bool)
    cold[data.cold_items] = True
    counts = data.interaction_counts()[1]
    rows = lambda items, ranking: flat_metrics(  # noqa: E731
        evaluate(model, objective, test.restrict_items(items), n, [10], ranking), cfg)
    ranked = lambda split, **kw: flat_metrics(  # noqa: E731
        {"ranking": evaluate_ranking(model, objective, split, n, [10], **kw)}, cfg)
    out = {"all": rows(np.arange(n), True), "cold": rows(data.cold_items, True),
           "warm": rows(np.flatnonzero(~cold.numpy()), False),
           "rare": rows(np.flatnonzero((counts >= 1) & (counts <= 5)), False),
           "shelf": ranked(test.restrict_items(data.cold_items), candidates=cold),
           "policy": {}, "epochs": rec.result.epochs, "best_epoch": rec.result.best_epoch,
           "valid_mean_auc": rec.result.history[rec.result.best_epoch - 1]["valid_mean_auc"]}
    for slots, threshold in POLICIES:
        exposure = Exposure(cold, slots, threshold)
        out["policy"][f"{slots}@{threshold}"] = {
            "all": ranked(test, exposure=exposure), "cold": ranked(test.restrict_items(data.cold_items),
                                                                   exposure=exposure)}
    print(f"{key:>24}: all watch {out['all']['watch_auc']:.4f} | cold watch {out['cold']['watch_auc']:.4f} "
          f"like {out['cold']['like_auc']:.4f} ctcvr {out['cold']['ctcvr_auc']:.4f} R@10 "
          f"{out['cold']['watch_recall@10']:.4f} shelf {out['shelf']['watch_recall@10']:.4f} | rare watch "
          f"{out['rare']['watch_auc']:.4f} | {out['epochs']} epochs", flush=True)
    return out


def run_update(cfg: Config, data: PreparedData, key: str) -> dict:
    """``rec.update`` on each cold item's first interactions: ``REVEAL`` of its positive test rows
    (seeded) are given to the trained model; the rest of the cold items' test rows are scored
    before and after."""
    rec = MultiTaskRecommender(cfg).fit_prepared(data)
    samples = data.test.restrict_items(data.cold_items).samples
    rng = np.random.default_rng(cfg.train.seed)
    positive = np.flatnonzero(np.nan_to_num(samples.labels[:, 0].numpy()) > 0)
    items = samples.item.numpy()
    revealed = np.concatenate([rng.permutation(positive[items[positive] == i])[:REVEAL]
                               for i in np.unique(items[positive])])
    rest = np.ones(len(samples), dtype=bool)
    rest[revealed] = False
    rest = samples.subset(torch.from_numpy(rest))
    scored = lambda: flat_metrics(evaluate_pointwise(rec.model, rec.objective, rest), cfg)  # noqa: E731
    before = scored()
    shown = samples.subset(torch.from_numpy(revealed))
    rows = pd.DataFrame({cfg.data.user_col: [data.catalog.user_ids[u] for u in shown.user.tolist()],
                         cfg.data.item_col: [data.catalog.item_ids[i] for i in shown.item.tolist()],
                         **{t.col: shown.labels[:, k].numpy() for k, t in enumerate(cfg.tasks)}})
    start = time.perf_counter()
    done = rec.update(rows)
    seconds = time.perf_counter() - start
    after = scored()
    print(f"{key:>24}: {done['items']} items, {len(rows)} interactions, {seconds:.1f}s | rest of the cold rows "
          f"watch {before['watch_auc']:.4f} -> {after['watch_auc']:.4f}", flush=True)
    return {"before": before, "after": after, "seconds": seconds, "items": done["items"], "interactions": len(rows)}


class ItemScore(torch.nn.Module):
    """A ranker that knows one number per item: every task's logit is the item's score."""

    def __init__(self, score: torch.Tensor, n_tasks: int):
        super().__init__()
        self.score, self.n_tasks = torch.nn.Parameter(score.float(), requires_grad=False), n_tasks

    def forward(self, user: torch.Tensor, item: torch.Tensor, **context) -> torch.Tensor:
        return self.score[item].unsqueeze(1).expand(-1, self.n_tasks)


def content_popularity(cfg: Config, data: PreparedData, seed: int) -> torch.Tensor:
    """Every item's predicted log(1 + training interactions): ridge regression on the warm items'
    year and genres (one-hot) and language-model vector, strength chosen on a held-out fifth."""
    items = data.item_table
    year = pd.get_dummies(items["release_year"].astype(str)).to_numpy(np.float32)
    genres = pd.get_dummies(items["genres"].explode()).groupby(level=0).max().to_numpy(np.float32)
    vectors = encode_text(cfg.text, data.user_table, items, progress=False).item.numpy()
    x = torch.from_numpy(np.hstack([year, genres, vectors, np.ones((len(items), 1), np.float32)])).double()
    counts = data.interaction_counts()[1]
    warm = np.flatnonzero(counts > 0)
    y = torch.from_numpy(np.log1p(counts)).double()
    fit = lambda rows, alpha: torch.linalg.solve(  # noqa: E731
        x[rows].T @ x[rows] + alpha * torch.eye(x.shape[1], dtype=x.dtype), x[rows].T @ y[rows])
    shuffled = np.random.default_rng(seed).permutation(warm)
    held, kept = shuffled[:len(warm) // 5], shuffled[len(warm) // 5:]
    alpha = min((0.1, 1.0, 10.0, 100.0), key=lambda a: float(((x[held] @ fit(kept, a) - y[held]) ** 2).mean()))
    return x @ fit(warm, alpha)


def run_ceilings(cfg: Config, data: PreparedData) -> dict:
    """Cold rows ranked by an oracle's and by content's popularity estimate (see the module doc)."""
    objective, n = Objective.from_config(cfg), len(data.catalog.item_ids)
    cold = torch.zeros(n, dtype=torch.bool)
    cold[data.cold_items] = True
    test = data.test.restrict_items(data.cold_items)
    positives = torch.nan_to_num(data.test.samples.labels[:, 0])
    # log counts: the scores pass through a sigmoid, which would tie large counts in float32
    oracle = torch.zeros(n, dtype=torch.float64).index_add_(0, data.test.samples.item, positives.double()).log1p()
    out = {}
    for name, score in (("oracle_popularity", oracle), ("content_popularity", content_popularity(
            cfg, data, cfg.train.seed))):
        model = ItemScore(score, len(cfg.tasks))
        out[name] = {**flat_metrics(evaluate_pointwise(model, objective, test.samples), cfg),
                     "shelf_watch_recall@10": flat_metrics({"ranking": evaluate_ranking(
                         model, objective, test, n, [10], candidates=cold)}, cfg)["watch_recall@10"]}
        print(f"{name:>20}: cold watch AUC {out[name]['watch_auc']:.4f} like {out[name]['like_auc']:.4f} "
              f"ctcvr {out[name]['ctcvr_auc']:.4f} | shelf R@10 {out[name]['shelf_watch_recall@10']:.4f}", flush=True)
    # for scale: how far popularity alone goes on the warm items' rows, where it is known
    warm = data.test.restrict_items(np.flatnonzero(~cold.numpy()))
    known = torch.from_numpy(data.interaction_counts()[1]).double().log1p()
    out["warm_training_popularity"] = flat_metrics(evaluate_pointwise(
        ItemScore(known, len(cfg.tasks)), objective, warm.samples), cfg)
    print(f"warm rows by training-period popularity: watch AUC {out['warm_training_popularity']['watch_auc']:.4f}")
    return out


def with_fraction(data: PreparedData, fraction: float, seed: int) -> PreparedData:
    """Each user's training rows (interactions and their sampled negatives alike) subsampled to
    ``fraction``, keeping at least one interaction per user; vocabularies refitted."""
    if fraction >= 1:
        return data
    train, rng = data.train, np.random.default_rng(seed)
    user, positive = train.user.numpy(), np.nan_to_num(train.labels[:, 0].numpy()) > 0
    keep = rng.random(len(train)) < fraction
    kept_one = np.zeros(user.max() + 1, dtype=bool)
    kept_one[user[keep & positive]] = True
    missing = np.flatnonzero(positive & ~kept_one[user])
    keep[missing[np.unique(user[missing], return_index=True)[1]]] = True
    return data.with_train(train.subset(torch.from_numpy(keep)))


def run_curve(cfg: Config, data: PreparedData, key: str, fraction: float) -> dict:
    rec = MultiTaskRecommender(cfg).fit_prepared(with_fraction(data, fraction, cfg.train.seed))
    test = flat_metrics(rec.evaluate(ranking=True), cfg)
    print(f"{key:>32}: watch {test['watch_auc']:.4f} like {test['like_auc']:.4f} "
          f"N@10 {test['watch_ndcg@10']:.4f}", flush=True)
    return test


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize(runs: dict, variants: list[str], seeds: list[int]) -> dict:
    out = {}
    for variant in variants:
        got = [runs[f"{variant}/{s}"] for s in seeds if f"{variant}/{s}" in runs]
        if not got:
            continue
        out[variant] = {part: {m: mean_std([r[part][m] for r in got]) for m in metrics}
                        for part, metrics in SUMMARY.items()}
        out[variant]["policy"] = {p: {part: mean_std([r["policy"][p][part]["watch_recall@10"] for r in got])
                                      for part in ("all", "cold")} for p in got[0]["policy"]}
        out[variant]["seeds"] = len(got)
    return out


def best(summary: dict) -> dict:
    if BEST not in summary or "id" not in summary or "text" not in summary:
        return {}
    b = summary[BEST]
    return {"model": BEST, "cold_watch_auc": b["cold"]["watch_auc"]["mean"],
            "cold_like_auc": b["cold"]["like_auc"]["mean"], "cold_ctcvr_auc": b["cold"]["ctcvr_auc"]["mean"],
            "cold_watch_recall@10": b["cold"]["watch_recall@10"]["mean"],
            "shelf_recall@10": b["shelf"]["watch_recall@10"]["mean"],
            "shelf_recall@10_id_model": summary["id"]["shelf"]["watch_recall@10"]["mean"],
            "warm_watch_auc_change": b["warm"]["watch_auc"]["mean"] - summary["text"]["warm"]["watch_auc"]["mean"]}


def markdown(result: dict) -> str:
    lines = []
    for part, title in (("cold", "cold-item test rows (AUC; Recall@10 over the full catalog)"),
                        ("shelf", "new-arrivals shelf (ranking the held-out movies only)"),
                        ("rare", "items with 1–5 training interactions"), ("warm", "warm items' test rows"),
                        ("all", "all test rows")):
        metrics = SUMMARY[part]
        lines += [f"**{title}**", "", "| variant | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        for name, v in result.get("summary", {}).items():
            lines.append(f"| {name} | " + " | ".join(f"{v[part][m]['mean']:.4f} ± {v[part][m]['std']:.4f}"
                                                     for m in metrics) + " |")
        lines.append("")
    lines += ["**new-arrivals policy** (`recommend(new_slots=S, new_threshold=T)`): watch Recall@10, all / cold",
              "", "| variant | off | " + " | ".join(f"S={p.split('@')[0]}, T={p.split('@')[1]}"
                                                     for p in (f"{s}@{t}" for s, t in POLICIES)) + " |",
              "|---" * (len(POLICIES) + 2) + "|"]
    for name, v in result.get("summary", {}).items():
        cells = [f"{v['all']['watch_recall@10']['mean']:.4f} / {v['cold']['watch_recall@10']['mean']:.4f}"]
        cells += [f"{p['all']['mean']:.4f} / {p['cold']['mean']:.4f}" for p in v["policy"].values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    update = result.get("update")
    if update:
        lines += ["", f"**rec.update** ({update['model']}, {update['reveal_per_item']} first interactions per cold item; "
                  f"the rest of the cold rows; {update['seconds']['mean']:.1f} ± {update['seconds']['std']:.1f} s)", "",
                  "| | watch_auc | like_auc | ctcvr_auc |", "|---|---|---|---|"]
        for when in ("before", "after"):
            lines.append(f"| {when} | " + " | ".join(f"{update[f'{when}_{m}']['mean']:.4f} ± "
                                                      f"{update[f'{when}_{m}']['std']:.4f}"
                                                      for m in ("watch_auc", "like_auc", "ctcvr_auc")) + " |")
    ceilings = result.get("ceilings")
    if ceilings:
        lines += ["", "**ceilings** (`--ceilings`: cold rows ranked by popularity alone, no model)", "",
                  "| score | cold watch_auc | cold like_auc | cold ctcvr_auc | shelf watch_recall@10 |",
                  "|---|---|---|---|---|"]
        for name in ("oracle_popularity", "content_popularity"):
            c = ceilings[name]
            lines.append(f"| {name} | {c['watch_auc']:.4f} | {c['like_auc']:.4f} | {c['ctcvr_auc']:.4f} | "
                         f"{c['shelf_watch_recall@10']:.4f} |")
        lines += ["", f"Warm rows by training-period popularity: watch AUC "
                  f"{ceilings['warm_training_popularity']['watch_auc']:.4f}."]
    curve = result.get("learning_curve")
    if curve:
        lines += ["", "**learning curve** (share of each user's training interactions; test watch AUC / like AUC)",
                  "", "| model | " + " | ".join(f"{f:.0%}" for f in FRACTIONS) + " |", "|---" * (len(FRACTIONS) + 1)
                  + "|"]
        for name, points in curve.items():
            lines.append(f"| {name} | " + " | ".join(
                f"{p['watch_auc']['mean']:.4f} / {p['like_auc']['mean']:.4f}" for p in points.values()) + " |")
    return "\n".join(lines) + "\n"


def plot_curve(curve: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("watch_auc", "like_auc")):
        for name, points in curve.items():
            xs = [float(f) * 100 for f in points]
            ax.errorbar(xs, [p[metric]["mean"] for p in points.values()],
                        yerr=[p[metric]["std"] for p in points.values()], marker="o", capsize=3, label=name)
        ax.set_xscale("log")
        ax.set_xticks([10, 25, 50, 100], ["10%", "25%", "50%", "100%"])
        ax.set_xlabel("share of each user's training interactions")
        ax.set_ylabel(f"test {metric.replace('_', ' ')}")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("ml100k-mt: less behaviour data")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="2024,2025,2026")
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1, help="train this many runs at once, one thread each")
    parser.add_argument("--curve", action="store_true", help="run the learning curve (on the full item set)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="cold_start.KEY=VALUE for the generator variants, e.g. cold_start.blend=1")
    parser.add_argument("--update", action="store_true", help=f"measure rec.update on {BEST}: {REVEAL} first "
                        "interactions of each cold item, the rest of their rows scored before and after")
    parser.add_argument("--ceilings", action="store_true", help="rank the cold items by an oracle's and by "
                        "content's popularity estimate (no model training)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    path = args.out / "cold_start.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    base = select_tasks(Config.from_yaml(CONFIG), ["watch", "like"])
    torch.set_num_threads(base.train.threads or 2)
    tables = load_tables(base.data)

    def write() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        (args.out / "cold_start.md").write_text(markdown(result))

    if args.curve:
        data = prepare(tables, base)
        todo = [(f"{name}/{fraction}/{seed}", protocol_config(base, model, args.max_epochs).with_overrides(
            [f"train.seed={seed}"]), fraction) for name, model in CURVE_MODELS.items() for fraction in FRACTIONS
            for seed in seeds]
        points = {}

        def done(key: str, row: dict) -> None:
            points[key] = row

        for fraction in FRACTIONS:
            run_all(run_curve, [(k, c) for k, c, f in todo if f == fraction], data, args.jobs, done, fraction)
        result["learning_curve"] = {
            name: {str(f): {m: mean_std([points[f"{name}/{f}/{s}"][m] for s in seeds])
                            for m in ("watch_auc", "like_auc", "ctcvr_auc", "watch_ndcg@10")} for f in FRACTIONS}
            for name in CURVE_MODELS}
        result["learning_curve_seeds"] = seeds
        result.pop("learning_curve_note", None)
        plot_curve(result["learning_curve"], args.out / "learning_curve.png")
        write()
        print(markdown(result))
        return

    variants = args.variants.split(",")
    cold_base = base.with_overrides(["data.cold_items=0.1"])
    data = prepare(tables, cold_base)
    if args.ceilings:
        result["ceilings"] = run_ceilings(protocol_config(cold_base, "mmoe+text", args.max_epochs), data)
        write()
        print(markdown(result))
        return
    if args.update:
        updates = {}
        run_all(run_update, [(f"{BEST}/{s}", variant_config(cold_base, BEST, s, args.max_epochs, args.overrides))
                 for s in seeds],
                data, args.jobs, lambda key, row: updates.update({key: row}))
        got = list(updates.values())
        result["update"] = {"model": BEST, "reveal_per_item": REVEAL, "seeds": seeds, "runs": updates,
                            "seconds": mean_std([r["seconds"] for r in got]),
                            **{f"{when}_{m}": mean_std([r[when][m] for r in got])
                               for when in ("before", "after") for m in ("watch_auc", "like_auc", "ctcvr_auc")}}
        write()
        print(json.dumps({k: v for k, v in result["update"].items() if k != "runs"}, indent=1))
        return
    runs = result.setdefault("runs", {})
    result.update(protocol="ml100k-mt, 10 % of movies held out (data.cold_items=0.1, data.seed 2024)",
                  cold_items=len(data.cold_items), seeds=seeds, policies=[list(p) for p in POLICIES],
                  overrides=args.overrides)
    todo = [(f"{v}/{s}", variant_config(cold_base, v, s, args.max_epochs, args.overrides)) for v in variants
            for s in seeds if f"{v}/{s}" not in runs]

    def done(key: str, row: dict) -> None:
        runs[key] = row
        result["summary"] = summarize(runs, list(VARIANTS), seeds)
        result["best"] = best(result["summary"])
        write()

    run_all(run_cold, todo, data, args.jobs, done)
    print(markdown(result))


if __name__ == "__main__":
    sys.exit(main())
