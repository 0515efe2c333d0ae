"""Benchmark protocol "ml100k-mt" (see DESIGN.md): quality per architecture, and training
speed against torch-rechub 0.9.0 measured in the same run on the same data.

    python benchmarks/ml100k_mt.py [--models single,sharedbottom,mmoe,ple,mmoe_esmm]
                                   [--max-epochs N] [--out DIR] [--no-rechub]

Writes DIR/ml100k_mt.json and DIR/ml100k_mt.md (default DIR: benchmarks/results/).
"""
from __future__ import annotations

import argparse
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
from common import load_prepared, protocol_config, select_tasks, training_steps

from polyrec.cli import DEFAULT_CONFIG
from polyrec.config import Config
from polyrec.data.dataset import PreparedData, Samples
from polyrec.evaluate.evaluator import predict_logits
from polyrec.models.network import MultiTaskModel
from polyrec.recommender import MultiTaskRecommender

# Best of torch-rechub 0.9.0 and DeepCTR-Torch 0.3.0 on this protocol (DESIGN.md / issue #2).
REFERENCE = {
    "sharedbottom": {"watch": 0.8470, "like": 0.8061, "ctcvr": 0.8712},
    "mmoe": {"watch": 0.8409, "like": 0.8074, "ctcvr": 0.8707},
    "ple": {"watch": 0.8448, "like": 0.8029, "ctcvr": 0.8700},
    "esmm": {"watch": 0.8458, "like": 0.8005, "ctcvr": 0.8711},
    "best": {"watch": 0.8470, "like": 0.8074, "ctcvr": 0.8712, "watch_ndcg@10": 0.1288, "like_ndcg@10": 0.1208},
}
TIMED_SAMPLES = 150 * 1024  # per speed measurement, after a warm-up of 10 batches


def inference_rate(model: MultiTaskModel, samples: Samples, repeats: int = 3) -> float:
    n = len(samples)
    best = min(_timed(lambda: predict_logits(model, samples.user, samples.item)) for _ in range(repeats))
    return n / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_quality(cfg: Config, data: PreparedData, name: str) -> dict:
    start = time.perf_counter()
    rec = MultiTaskRecommender(cfg).fit_prepared(data)
    seconds = time.perf_counter() - start
    test = rec.evaluate(ranking=True)
    result = rec.result
    row = {"test": test, "valid_mean_auc": result.history[result.best_epoch - 1]["valid_mean_auc"],
           "params": rec.model.n_parameters(), "epochs": result.epochs, "best_epoch": result.best_epoch,
           "train_seconds": round(seconds, 1), "train_samples_per_s": round(result.train_samples_per_s),
           "infer_samples_per_s": round(inference_rate(rec.model, data.test.samples))}
    print(f"{name:>14}: watch {test['watch']['auc']:.4f} like {test['like']['auc']:.4f} "
          f"ctcvr {test['ctcvr']['auc']:.4f} ndcg@10 {test['ranking']['watch']['ndcg@10']:.4f}/"
          f"{test['ranking']['like']['ndcg@10']:.4f} | {result.epochs} epochs {seconds:.0f}s "
          f"{row['train_samples_per_s']:,} samples/s", flush=True)
    return row


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


# ------------------------------------------------------------------ report
def markdown(result: dict) -> str:
    lines = ["| model | watch AUC | like AUC | CTCVR AUC | rating RMSE | watch R@10 | watch N@10 | like R@10 | "
             "like N@10 | params | epochs | train samples/s | infer samples/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        t = r["test"]
        rmse = f"{t['rating']['rmse']:.4f}" if "rating" in t else "–"
        lines.append(f"| {name} | {t['watch']['auc']:.4f} | {t['like']['auc']:.4f} | {t['ctcvr']['auc']:.4f} | {rmse} "
                     f"| {t['ranking']['watch']['recall@10']:.4f} | {t['ranking']['watch']['ndcg@10']:.4f} "
                     f"| {t['ranking']['like']['recall@10']:.4f} | {t['ranking']['like']['ndcg@10']:.4f} "
                     f"| {r['params']:,} | {r['epochs']} | {r['train_samples_per_s']:,} | "
                     f"{r['infer_samples_per_s']:,} |")
    ref = REFERENCE["best"]
    lines.append(f"| *reference best (torch-rechub / DeepCTR-Torch)* | {ref['watch']:.4f} | {ref['like']:.4f} | "
                 f"{ref['ctcvr']:.4f} | – | 0.1078 | {ref['watch_ndcg@10']:.4f} | 0.1334 | {ref['like_ndcg@10']:.4f} "
                 "| | | | |")
    if result.get("speed"):
        lines += ["", "| training speed (same run, same data, batch 1024, float32) | polyrec samples/s | "
                  "torch-rechub 0.9.0 samples/s | speedup |", "|---|---|---|---|"]
        for arch, s in result["speed"].items():
            lines.append(f"| {arch} | {s['polyrec_samples_per_s']:,} | {s['rechub_samples_per_s']:,} | "
                         f"{s['speedup']}× |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="single,sharedbottom,mmoe,ple,mmoe_esmm")
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--tasks", default="watch,like",
                        help="tasks of the config to train (add ',rating' for the optional regression task)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override applied to every model, e.g. model.dropout=0.2")
    parser.add_argument("--no-rechub", action="store_true", help="skip the torch-rechub speed comparison")
    args = parser.parse_args(argv)

    base = select_tasks(Config.from_yaml(args.config, args.overrides), args.tasks.split(","))
    torch.set_num_threads(base.train.threads or 2)
    data = load_prepared(base)
    result = {"protocol": "ml100k-mt", "machine": {"cpu_threads": torch.get_num_threads(), "cores": os.cpu_count(),
                                                  "python": platform.python_version(), "torch": torch.__version__},
              "settings": {"max_epochs": args.max_epochs, "config": str(args.config.name), "tasks": args.tasks,
                           "overrides": args.overrides}, "models": {}}
    for name in args.models.split(","):
        result["models"][name] = run_quality(protocol_config(base, name, args.max_epochs), data, name)
    if not args.no_rechub:
        result["speed"] = run_speed(base, data, ["mmoe", "sharedbottom"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ml100k_mt.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "ml100k_mt.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    sys.exit(main())
