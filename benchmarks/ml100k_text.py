"""Cold-start variant of "ml100k-mt" (DESIGN.md): does language-model text help, and where?

10% of movies (seeded) are held out of train and valid entirely. For each architecture and
variant, over several seeds, report test metrics on all rows and on the cold-item rows:

    id            IDs and categorical side features (year, genre, ...), no text
    text          item text and side features, no user or item ID
    text+id       IDs, side features and item text (frozen encoder, whitening + MoE adaptor)
    text+id+user  text+id plus user text: profile and the mean text of the last training items

    python benchmarks/ml100k_text.py [--archs mmoe,ple] [--variants id,text,text+id,text+id+user]
                                     [--seeds 2024,2025,2026] [--max-epochs N] [--out DIR]

Also times encoding the 1,682 movie texts (empty cache, then cached). Writes
DIR/ml100k_text.json and DIR/ml100k_text.md (default DIR: benchmarks/results/).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import MEASURED_WITH, flat_metrics, select_tasks

from polyrec.cli import DEFAULT_CONFIG
from polyrec.config import Config
from polyrec.data.dataset import prepare
from polyrec.data.sources import load_tables
from polyrec.evaluate.evaluator import evaluate
from polyrec.recommender import MultiTaskRecommender
from polyrec.text.encoder import TextEncoder
from polyrec.text.templates import render

METRICS = ["watch_auc", "like_auc", "ctcvr_auc", "watch_recall@10", "watch_ndcg@10", "like_ndcg@10"]
ID_FEATURES = ("user_id", "item_id")


def variant_config(base: Config, arch: str, variant: str, seed: int, max_epochs: int) -> Config:
    raw = select_tasks(base, ["watch", "like"]).model_dump()
    raw["model"]["arch"], raw["train"]["seed"], raw["train"]["max_epochs"] = arch, seed, max_epochs
    raw["train"]["progress"] = False
    text = raw["text"]
    if variant == "id":
        raw["text"] = None
    elif variant == "text":
        raw["features"] = [f for f in raw["features"] if f["name"] not in ID_FEATURES]
        raw["model"]["oov_dropout"] = {}
    if variant in ("text", "text+id"):
        text.update(user_template=None, user_history=0)
    return Config.from_dict(raw)


def run_one(cfg: Config, tables) -> dict:
    data = prepare(tables, cfg)
    rec = MultiTaskRecommender(cfg).fit_prepared(data)
    n_items = len(data.catalog.item_ids)
    cold = evaluate(rec.model, rec.objective, data.test.restrict_items(data.cold_items), n_items, [10], True)
    return {"all": flat_metrics(rec.evaluate(ranking=True), cfg), "cold": flat_metrics(cold, cfg),
            "epochs": rec.result.epochs,
            "train_samples_per_s": rec.result.train_samples_per_s, "cold_items": len(data.cold_items)}


def summarize(runs: list[dict], part: str) -> dict:
    out = {}
    for m in METRICS:
        values = [r[part][m] for r in runs]
        out[m] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def encoding_time(base: Config, tables) -> dict:
    """Encode every movie text into an empty cache, then again from the cache (fresh encoder objects)."""
    texts = render(base.text.item_template, tables.items, "text.item_template")
    with tempfile.TemporaryDirectory() as cache:
        encoder = TextEncoder(base.text.model, cache, base.text.batch_size, progress=False)
        start = time.perf_counter()
        encoder.model  # loading the language model (first import of transformers included)
        loaded = time.perf_counter()
        encoder.encode(texts)
        encoded = time.perf_counter()
        TextEncoder(base.text.model, cache, base.text.batch_size, progress=False).encode(texts)
        cached = time.perf_counter() - encoded
    return {"texts": len(texts), "load_seconds": round(loaded - start, 2), "encode_seconds": round(encoded - loaded, 2),
            "cached_seconds": round(cached, 3)}


def markdown(result: dict) -> str:
    lines = []
    for part, title in (("all", "all test rows"), ("cold", "cold-item test rows")):
        lines += [f"**{title}** (mean ± std over seeds {result['seeds']})", "",
                  "| variant | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        for name, v in result["variants"].items():
            cells = [f"{v[part][m]['mean']:.4f} ± {v[part][m]['std']:.4f}" for m in METRICS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("| variant | train samples/s | slowdown vs id |")
    lines.append("|---|---|---|")
    for name, v in result["variants"].items():
        slowdown = f"{v['slowdown_vs_id']:.2f}×" if v.get("slowdown_vs_id") else "–"
        lines.append(f"| {name} | {v['train_samples_per_s']:,.0f} | {slowdown} |")
    enc = result["encoding"]
    lines += ["", f"Encoding {enc['texts']:,} movie texts with an empty cache: {enc['encode_seconds']:.1f} s "
              f"(plus {enc['load_seconds']:.1f} s to load the language model); from the cache: "
              f"{enc['cached_seconds']:.2f} s."]
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> None:
    id_rate = {v["arch"]: v["train_samples_per_s"] for v in result["variants"].values() if v["variant"] == "id"}
    for v in result["variants"].values():
        v["slowdown_vs_id"] = id_rate[v["arch"]] / v["train_samples_per_s"] if v["arch"] in id_rate else None
    out.mkdir(parents=True, exist_ok=True)
    (out / "ml100k_text.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "ml100k_text.md").write_text(markdown(result))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="mmoe,ple")
    parser.add_argument("--variants", default="id,text,text+id,text+id+user")
    parser.add_argument("--seeds", default="2024,2025,2026")
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    args = parser.parse_args(argv)

    base = Config.from_yaml(args.config, [*(MEASURED_WITH if args.config == DEFAULT_CONFIG else []),
                                          "data.cold_items=0.1"])
    if base.text is None:
        raise SystemExit(f"{args.config} has no text section to compare against")
    torch.set_num_threads(base.train.threads or 2)
    tables = load_tables(base.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    archs = args.archs.split(",")
    result = {"protocol": "ml100k-mt cold-start", "seeds": seeds, "cold_share": 0.1,
              "text": base.text.model_dump(), "encoding": encoding_time(base, tables), "variants": {}}
    print(f"encoding: {result['encoding']}", flush=True)
    for arch in archs:
        for variant in args.variants.split(","):
            runs = []
            for seed in seeds:
                runs.append(run_one(variant_config(base, arch, variant, seed, args.max_epochs), tables))
                r = runs[-1]
                print(f"{arch}/{variant} seed {seed}: all watch {r['all']['watch_auc']:.4f} like "
                      f"{r['all']['like_auc']:.4f} ndcg {r['all']['watch_ndcg@10']:.4f} | cold watch "
                      f"{r['cold']['watch_auc']:.4f} like {r['cold']['like_auc']:.4f} | {r['epochs']} epochs "
                      f"{r['train_samples_per_s']:,.0f}/s", flush=True)
            name = f"{arch}/{variant}" if len(archs) > 1 else variant
            result["variants"][name] = {"arch": arch, "variant": variant, "seeds": seeds,
                                        "all": summarize(runs, "all"), "cold": summarize(runs, "cold"), "runs": runs,
                                        "train_samples_per_s": statistics.median(
                                            r["train_samples_per_s"] for r in runs)}
            write(result, args.out)  # after every variant, so a long run leaves its results so far
    print(markdown(result))


if __name__ == "__main__":
    sys.exit(main())
