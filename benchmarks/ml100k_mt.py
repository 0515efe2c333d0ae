"""Benchmark protocol "ml100k-mt" on the reference rows: quality per architecture over 3 model
seeds, next to torch-rechub 0.9.0 and DeepCTR-Torch 0.3.0 on the very same rows, an ablation of
what polyrec adds (behaviour history, language-model text) with paired bootstrap intervals, and
training speed against torch-rechub (and of the history model against the ID-only one) measured
in the same run.

    python benchmarks/ml100k_mt.py [--models single,sharedbottom,mmoe,ple,mmoe_esmm,mmoe+history,...]
                                   [--seeds 2024,2025,2026] [--max-epochs N] [--out DIR] [--no-rechub]

A model is ARCH[_esmm][+stats][+history][+text[+usertext]] (see common.protocol_config). The rows (train/valid/test
with their pre-drawn negatives) come from the built-in dataset ``ml100k-mt``
(configs/ml100k_mt.yaml), whose content hashes are those of the reference runs; they are
recorded in the JSON. "Seeds" are train.seed: the rows are fixed. Runs are written to
DIR/ml100k_mt.json as they finish and skipped when already there (re-running resumes; --fresh
starts over); each run's test predictions go to DIR/predictions/ (not committed) for the paired
bootstrap: every model with "+" is compared with the model before its first "+" (its ID-only
variant), resampling test users, the same draws for every seed. ``best`` is the model with the
highest mean validation AUC, ``per_arch`` the same per architecture. DIR/ml100k_mt.md has the
tables.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common import (
    WeightedAUC,
    flat_metrics,
    paired_bootstrap,
    protocol_config,
    run_all,
    select_tasks,
    training_steps,
    weighted_mean,
)

from polyrec.config import Config
from polyrec.data.dataset import PreparedData, prepare
from polyrec.data.rows import Samples
from polyrec.data.ml100k_mt import rows_sha256
from polyrec.data.sources import load_tables
from polyrec.evaluate.evaluator import evaluate_pointwise, evaluate_ranking, predict_logits
from polyrec.models.network import MultiTaskModel
from polyrec.recommender import MultiTaskRecommender

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "ml100k_mt.yaml"
METRICS = ["watch_auc", "like_auc", "ctcvr_auc", "watch_recall@10", "watch_ndcg@10", "like_recall@10",
           "like_ndcg@10"]
# torch-rechub 0.9.0 and DeepCTR-Torch 0.3.0 on these rows, same features and settings (issue #14)
REFERENCE = {
    "mmoe": {"torch-rechub": [0.8351, 0.7960, 0.8657, 0.1115, 0.0945], "DeepCTR-Torch": [0.8409, 0.8074, 0.8707, 0.1224, 0.1117]},
    "ple": {"torch-rechub": [0.8304, 0.7941, 0.8607, 0.1073, 0.0898], "DeepCTR-Torch": [0.8448, 0.8029, 0.8700, 0.1288, 0.1208]},
    "sharedbottom": {"torch-rechub": [0.8364, 0.7930, 0.8660, 0.1054, 0.1030],
                     "DeepCTR-Torch": [0.8470, 0.8061, 0.8712, 0.1259, 0.1119]},
    "mmoe_esmm": {"torch-rechub": [0.8458, 0.8005, 0.8706, 0.1281, 0.1133],
                  "DeepCTR-Torch": [0.8447, 0.7996, 0.8711, 0.1243, 0.1073]},
}
REFERENCE_METRICS = ["watch_auc", "like_auc", "ctcvr_auc", "watch_ndcg@10", "like_ndcg@10"]
ARCHS = ["single", "sharedbottom", "mmoe", "ple", "mmoe_esmm"]
TIMED_SAMPLES = 150 * 1024  # per speed measurement, after a warm-up of 10 batches


def inference_rate(model: MultiTaskModel, samples: Samples, repeats: int = 3) -> float:
    n = len(samples)
    best = min(_timed(lambda: predict_logits(model, samples.user, samples.item, samples.context()))
               for _ in range(repeats))
    return n / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_quality(cfg: Config, data: PreparedData, key: str, predictions: Path) -> dict:
    start = time.perf_counter()
    rec = MultiTaskRecommender(cfg).fit_prepared(data)
    seconds = time.perf_counter() - start
    result = rec.result
    test = flat_metrics(evaluate_and_keep(rec, data, predictions / (key.replace("/", "-") + ".npz")), cfg)
    row = {"test": test, "valid_mean_auc": result.history[result.best_epoch - 1]["valid_mean_auc"],
           "params": rec.model.n_parameters(), "epochs": result.epochs, "best_epoch": result.best_epoch,
           "threads": cfg.train.threads,
           "valid_curve": [{k: round(v, 4) for k, v in flat_metrics(r["valid"], cfg).items()} for r in result.history],
           "train_seconds": round(seconds, 1), "train_samples_per_s": round(result.train_samples_per_s),
           "infer_samples_per_s": round(inference_rate(rec.model, data.test.samples))}
    print(f"{key:>20}: watch {test['watch_auc']:.4f} like {test['like_auc']:.4f} ctcvr {test['ctcvr_auc']:.4f} "
          f"ndcg@10 {test['watch_ndcg@10']:.4f}/{test['like_ndcg@10']:.4f} | {result.epochs} epochs "
          f"{seconds:.0f}s {row['train_samples_per_s']:,} samples/s", flush=True)
    return row


def evaluate_and_keep(rec: MultiTaskRecommender, data: PreparedData, path: Path) -> dict:
    """The test metrics, keeping each test row's scores and each user's NDCG@10 in ``path``."""
    objective, samples = rec.objective, data.test.samples
    metrics, per_user = evaluate_pointwise(rec.model, objective, samples), {}
    metrics["ranking"] = evaluate_ranking(rec.model, objective, data.test, len(data.catalog.item_ids), [10],
                                          per_user=per_user)
    scores = objective.scores(predict_logits(rec.model, samples.user, samples.item, samples.context()))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, user=samples.user.numpy(), labels=samples.labels.numpy(),
                        **{f"score:{k}": v.numpy() for k, v in scores.items()},
                        **{f"{task}:{name}": v for task, values in per_user.items() for name, v in values.items()})
    return metrics


def ablation(runs: dict, models: list[str], seeds: list[int], predictions: Path, n_users: int) -> dict:
    """Each ``BASE+...`` model against ``BASE`` on the same seeds: mean difference and the paired
    user-level bootstrap 95 % interval, per metric."""
    def metric_fns(name: str, metric: str) -> list:
        fns = []
        for seed in seeds:
            saved = np.load(predictions / f"{name}-{seed}.npz")
            users, labels = saved["user"], saved["labels"]
            if metric.endswith("_auc"):
                task = metric.removesuffix("_auc")
                rows = ~np.isnan(labels[:, 0 if task in ("watch", "ctcvr") else 1])
                y = labels[:, 0] * np.nan_to_num(labels[:, 1]) if task == "ctcvr" else labels[:, 0 if task == "watch" else 1]
                fns.append(WeightedAUC(y[rows], saved[f"score:{task}"][rows], users[rows]))
            else:
                task = metric.split("_")[0]
                fns.append(weighted_mean(saved[f"{task}:ndcg@10"], saved[f"{task}:user"]))
        return fns

    out = {}
    for name in models:
        base = name.split("+")[0]
        done = lambda m: all((predictions / f"{m}-{s}.npz").exists() and f"{m}/{s}" in runs for s in seeds)  # noqa: E731
        if "+" not in name or base not in models or not (done(name) and done(base)):
            continue
        out[name] = {"baseline": base, "seeds": seeds}
        for metric in REFERENCE_METRICS:
            delta, low, high = paired_bootstrap(metric_fns(base, metric), metric_fns(name, metric), n_users)
            out[name][metric] = {"delta": round(delta, 4), "ci95": [round(low, 4), round(high, 4)]}
        print(f"{'vs ' + base:>20}: {name} " + " ".join(f"{m} {v['delta']:+.4f} [{v['ci95'][0]:+.4f}, "
                                                        f"{v['ci95'][1]:+.4f}]" for m, v in out[name].items()
                                                        if isinstance(v, dict)), flush=True)
    return out


def best_by_validation(summary: dict, seeds: list[int]) -> tuple[dict, dict]:
    """The model with the highest mean validation AUC, overall and per architecture (its variants
    compete), with its test means; only models with every seed done compete."""
    def entry(name: str) -> dict:
        return {"model": name, "valid_mean_auc": summary[name]["valid_mean_auc"],
                **{m: summary[name]["mean"][m] for m in REFERENCE_METRICS}}

    pick = lambda names: max(names, key=lambda n: summary[n]["valid_mean_auc"])  # noqa: E731
    complete = [n for n in summary if summary[n]["seeds"] == len(seeds)]
    per_arch = {}
    for arch in ARCHS:
        names = [n for n in complete if n.split("+")[0] == arch]
        if names:
            per_arch[arch] = entry(pick(names))
    return (entry(pick(complete)) if complete else {}), per_arch


def summarize(runs: dict, models: list[str], seeds: list[int]) -> dict:
    summary = {}
    for name in models:
        done = [runs[f"{name}/{seed}"] for seed in seeds if f"{name}/{seed}" in runs]
        if not done:
            continue
        metrics = {m: [r["test"][m] for r in done] for m in done[0]["test"]}
        summary[name] = {"mean": {m: round(statistics.fmean(v), 4) for m, v in metrics.items()},
                         "valid_mean_auc": round(statistics.fmean(r["valid_mean_auc"] for r in done), 4),
                         "std": {m: round(statistics.stdev(v), 4) if len(v) > 1 else 0.0 for m, v in metrics.items()},
                         "seeds": len(done), "epochs": [r["epochs"] for r in done],
                         "params": done[0]["params"],
                         "train_samples_per_s": round(statistics.median(r["train_samples_per_s"] for r in done)),
                         "infer_samples_per_s": round(statistics.median(r["infer_samples_per_s"] for r in done))}
    return summary


# ------------------------------------------------------------------ speed vs torch-rechub
def polyrec_epoch_rate(cfg: Config, data: PreparedData, subset: Samples) -> float:
    """The trainer's own step over ``subset`` (after a warm-up of 10 batches)."""
    steps = len(subset) // cfg.train.batch_size
    return steps * cfg.train.batch_size / sum(training_steps(cfg, replace(data, train=subset), steps))


def rechub_epoch_rate(cfg: Config, data: PreparedData, subset: Samples, arch: str) -> float:
    """torch-rechub's own MTLTrainer.train_one_epoch with its DataLoader, same features and sizes."""
    from torch.utils.data import DataLoader
    from torch_rechub.basic.features import SparseFeature
    from torch_rechub.models.multi_task import MMOE, PLE, SharedBottom
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import TorchDataset

    enc, m = data.encoder, cfg.model
    specs = enc.side_specs("user", "cat") + enc.side_specs("item", "cat")
    cat = torch.cat([data.users.cat[subset.user], data.items.cat[subset.item]], 1).numpy()
    x = {s.name: cat[:, k] - enc.offsets[s.name] for k, s in enumerate(specs)}
    y = np.nan_to_num(subset.labels.numpy())  # rechub has no label masks; values do not affect speed
    features = [SparseFeature(s.name, vocab_size=enc.sizes[s.name], embed_dim=m.embed_dim) for s in specs]
    types = ["classification" if t.kind == "binary" else "regression" for t in cfg.tasks]
    towers = [{"dims": m.tower_dims}] * len(types)
    if arch == "mmoe":
        model = MMOE(features, types, m.n_experts, {"dims": m.expert_dims}, towers)
    elif arch == "ple":
        model = PLE(features, types, m.ple_shared_experts, m.ple_task_experts, m.ple_levels,
                    {"dims": m.expert_dims}, towers)
    else:
        model = SharedBottom(features, types, {"dims": m.expert_dims}, towers)
    trainer = MTLTrainer(model, types, optimizer_params={"lr": cfg.train.lr, "weight_decay": 0.0}, n_epoch=1,
                         device="cpu", model_path="/tmp")
    torch.manual_seed(0)
    warm = DataLoader(TorchDataset({k: v[:10 * 1024] for k, v in x.items()}, y[:10 * 1024]), batch_size=1024)
    trainer.train_one_epoch(warm)
    loader = DataLoader(TorchDataset(x, y), batch_size=cfg.train.batch_size, shuffle=True)
    seconds = _timed(lambda: trainer.train_one_epoch(loader))
    return len(y) / seconds


def run_speed(base: Config, data: PreparedData, archs: list[str], rounds: int = 3) -> dict:
    """Alternate the two libraries so machine noise hits both; report medians and their ratio."""
    import contextlib
    import io

    subset = data.train.subset(torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[
        :TIMED_SAMPLES])
    out = {}
    for arch in archs:
        # torch-rechub's MLPs have no dropout: time polyrec on the identical model
        cfg = protocol_config(base, arch, 1).with_overrides(["model.dropout=0.0"])
        ours, theirs = [], []
        for _ in range(rounds):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                theirs.append(rechub_epoch_rate(cfg, data, subset, arch))
            ours.append(polyrec_epoch_rate(cfg, data, subset))
        out[arch] = {"polyrec_samples_per_s": round(statistics.median(ours)),
                     "rechub_samples_per_s": round(statistics.median(theirs)),
                     "speedup": round(statistics.median(ours) / statistics.median(theirs), 2),
                     "rounds": rounds, "samples_per_round": len(subset)}
        print(f"{'speed ' + arch:>14}: polyrec {out[arch]['polyrec_samples_per_s']:,}/s vs torch-rechub "
              f"{out[arch]['rechub_samples_per_s']:,}/s -> {out[arch]['speedup']}x", flush=True)
    return out


def history_speed(base: Config, data: PreparedData, history: dict, rounds: int = 3) -> dict:
    """Training samples/s of MMoE with and without the history, alternated, and their ratio."""
    subset = data.train.subset(torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[
        :TIMED_SAMPLES])
    rates = {"mmoe": [], "mmoe+history": []}
    for _ in range(rounds):
        for name in rates:
            rates[name].append(polyrec_epoch_rate(protocol_config(base, name, 1, history), data, subset))
    out = {name: round(statistics.median(r)) for name, r in rates.items()}
    out["ratio"] = round(out["mmoe+history"] / out["mmoe"], 2)
    print(f"{'speed history':>14}: {out['mmoe+history']:,}/s vs ID-only {out['mmoe']:,}/s -> {out['ratio']}x", flush=True)
    return out


# ------------------------------------------------------------------ report
def markdown(result: dict) -> str:
    def cell(name: str, metric: str) -> str:
        mean, std = result["summary"][name]["mean"][metric], result["summary"][name]["std"][metric]
        return f"{mean:.4f} ± {std:.4f}"

    lines = ["| model | watch AUC | like AUC | CTCVR AUC | watch R@10 | watch N@10 | like R@10 | like N@10 | seeds | "
             "train samples/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in result["summary"].items():
        lines.append(f"| polyrec {name} | " + " | ".join(cell(name, m) for m in METRICS)
                     + f" | {row['seeds']} | {row['train_samples_per_s']:,} |")
        if "+" in name:
            continue
        for library, values in REFERENCE.get(name, {}).items():
            ref = dict(zip(REFERENCE_METRICS, values))
            lines.append(f"| *{library} {name}* | " + " | ".join(f"{ref[m]:.4f}" if m in ref else "–" for m in METRICS)
                         + " | | |")
    lines += ["", f"Rows: the reference rows (content sha256 train {result['rows_sha256']['train'][:12]}…, valid "
              f"{result['rows_sha256']['valid'][:12]}…, test {result['rows_sha256']['test'][:12]}…); "
              f"polyrec seeds {result['seeds']} (mean ± std); reference libraries as reported for these rows."]
    if result.get("ablation"):
        lines += ["", "Ablation: difference to the same architecture's ID-only model (mean of the paired seeds) and "
                  "its paired user-level bootstrap 95 % interval (1,000 resamples of test users)", "",
                  "| model | vs | " + " | ".join(REFERENCE_METRICS) + " |", "|---|---|" + "---|" * len(REFERENCE_METRICS)]
        for name, row in result["ablation"].items():
            lines.append(f"| {name} | {row['baseline']} | " + " | ".join(
                f"{row[m]['delta']:+.4f} [{row[m]['ci95'][0]:+.4f}, {row[m]['ci95'][1]:+.4f}]"
                for m in REFERENCE_METRICS) + " |")
    if result.get("best"):
        lines += ["", "Chosen on validation (mean validation AUC over seeds), test means:", "",
                  "| | model | valid mean AUC | " + " | ".join(REFERENCE_METRICS) + " |",
                  "|---|---|---|" + "---|" * len(REFERENCE_METRICS)]
        for label, row in [("best", result["best"]), *result["per_arch"].items()]:
            lines.append(f"| {label} | {row['model']} | {row['valid_mean_auc']:.4f} | "
                         + " | ".join(f"{row[m]:.4f}" for m in REFERENCE_METRICS) + " |")
    if result.get("history_speed"):
        sp = result["history_speed"]
        lines += ["", f"Training speed, MMoE with history vs ID-only (same run, alternated): {sp['mmoe+history']:,} vs "
                  f"{sp['mmoe']:,} samples/s ({sp['ratio']}×)."]
    if result.get("speed"):
        lines += ["", "| training speed (same run, same data, batch 1024, float32) | polyrec samples/s | "
                  "torch-rechub 0.9.0 samples/s | speedup |", "|---|---|---|---|"]
        for arch, sp in result["speed"].items():
            lines.append(f"| {arch} | {sp['polyrec_samples_per_s']:,} | {sp['rechub_samples_per_s']:,} | "
                         f"{sp['speedup']}× |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="single,sharedbottom,mmoe,ple,mmoe_esmm")
    parser.add_argument("--seeds", default="2024,2025,2026")
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--tasks", default="watch,like",
                        help="tasks of the config to train (add ',rating' for the optional regression task)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override applied to every model, e.g. model.dropout=0.2")
    parser.add_argument("--history-encoder", default="attention", choices=["attention", "transformer"],
                        help="the encoder of +history models")
    parser.add_argument("--no-rechub", action="store_true", help="skip the torch-rechub speed comparison")
    parser.add_argument("--no-speed", action="store_true", help="skip every speed measurement")
    parser.add_argument("--jobs", type=int, default=1, help="train this many runs at once, one thread each")
    parser.add_argument("--fresh", action="store_true", help="ignore the runs already in the JSON")
    args = parser.parse_args(argv)
    models, seeds = args.models.split(","), [int(s) for s in args.seeds.split(",")]

    base = select_tasks(Config.from_yaml(args.config, args.overrides), args.tasks.split(","))
    torch.set_num_threads(base.train.threads or 2)
    tables = load_tables(base.data)
    history = {"encoder": args.history_encoder}
    # rows with history spans and statistics; models without those sections ignore them
    data = prepare(tables, base.with_overrides(["history={}", "stats={}"]))
    path, predictions = args.out / "ml100k_mt.json", args.out / "predictions"
    settings = {"max_epochs": args.max_epochs, "config": args.config.name, "tasks": args.tasks,
                "overrides": args.overrides, "history": history,
                "config_sha256": hashlib.sha256(base.model_dump_json().encode()).hexdigest()[:16]}
    saved = json.loads(path.read_text()) if path.exists() and not args.fresh else {}
    runs = saved.get("runs", {}) if saved.get("settings") == settings else {}
    result = {"protocol": "ml100k-mt (reference rows)", "rows_sha256": rows_sha256(tables), "seeds": seeds,
              "settings": settings, "machine": {"cpu_threads": torch.get_num_threads(), "cores": os.cpu_count(),
                                                "python": platform.python_version(), "torch": torch.__version__},
              "reference": {name: {lib: dict(zip(REFERENCE_METRICS, v)) for lib, v in libs.items()}
                            for name, libs in REFERENCE.items()},
              "speed": saved.get("speed", {}), "history_speed": saved.get("history_speed", {}), "runs": runs}

    def write() -> None:
        result["summary"] = summarize(runs, models, seeds)
        result["best"], result["per_arch"] = best_by_validation(result["summary"], seeds)
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        (args.out / "ml100k_mt.md").write_text(markdown(result))

    todo = [(f"{name}/{seed}", protocol_config(base, name, args.max_epochs, history).with_overrides(
        [f"train.seed={seed}"])) for name in models for seed in seeds if f"{name}/{seed}" not in runs]
    def done(key: str, row: dict) -> None:
        runs[key] = row
        write()

    run_all(run_quality, todo, data, args.jobs, done, predictions)
    # a comparison stays until it is measured again (the predictions it needs are not committed)
    earlier = {name: entry for name, entry in saved.get("ablation", {}).items() if name in models and name in runs}
    measured = {**earlier, **ablation(runs, models, seeds, predictions, len(data.catalog.user_ids))}
    result["ablation"] = {name: measured[name] for name in models if name in measured}
    if not args.no_speed:
        result["history_speed"] = history_speed(base, data, history)
        if not args.no_rechub:
            result["speed"] = run_speed(base, data, ["mmoe", "sharedbottom"])
    write()
    print(markdown(result))


if __name__ == "__main__":
    sys.exit(main())
