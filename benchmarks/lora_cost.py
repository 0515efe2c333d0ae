"""CPU cost of `text.mode: lora` (the encoder fine-tuned with LoRA adapters) against `frozen`.

    python benchmarks/lora_cost.py [--steps 8] [--out DIR]

Times whole training steps (batch 1024, watch + like, MMoE, the default config's text) in
both modes on the same batches, extrapolates seconds per epoch of the ml100k-mt training
split, and writes DIR/lora_cost.json (default DIR: benchmarks/results/).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from common import load_prepared, quickstart_config, select_tasks

from polyrec.config import Config
from polyrec.models.network import model_for
from polyrec.recommender import MultiTaskRecommender
from polyrec.text.inputs import encode_text
from polyrec.text.lora import LoraItemEncoder
from polyrec.train.trainer import make_optimizer, run_epoch, seed_everything
from polyrec.weighting import build_weighting


def step_seconds(cfg: Config, data, batches) -> float:
    seed_everything(cfg.train.seed, cfg.train.threads)
    rec = MultiTaskRecommender(cfg)
    encoder = LoraItemEncoder.for_catalog(cfg.text, data.text.item_texts, data.text.item_whitening)
    model = model_for(cfg, data, encoder)
    weighting = build_weighting(cfg.weighting, cfg.tasks)
    optimizer = make_optimizer(model, weighting, cfg.train)
    gen = torch.Generator().manual_seed(0)
    run_epoch(model, rec.objective, weighting, optimizer, batches.subset(torch.arange(1024)), 1024, gen)  # warm-up
    _, _, seconds = run_epoch(model, rec.objective, weighting, optimizer, batches, 1024, gen)
    return seconds / (len(batches) // 1024)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    base = select_tasks(quickstart_config(["train.progress=false"]), ["watch", "like"])
    torch.set_num_threads(base.train.threads or 2)
    data = load_prepared(base)
    data = data.with_text(encode_text(base.text, data.user_table, data.item_table, False))
    batches = data.train.subset(torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[
        :args.steps * 1024])
    frozen = step_seconds(base, data, batches)
    lora = step_seconds(base.with_overrides(["text.mode=lora"]), data, batches)
    steps_per_epoch = len(data.train) // base.train.batch_size + 1
    result = {"steps_timed": args.steps, "batch_size": 1024, "train_samples": len(data.train),
              "frozen_seconds_per_step": round(frozen, 4), "lora_seconds_per_step": round(lora, 4),
              "lora_vs_frozen": round(lora / frozen, 1),
              "frozen_minutes_per_epoch": round(frozen * steps_per_epoch / 60, 2),
              "lora_minutes_per_epoch": round(lora * steps_per_epoch / 60, 1),
              "threads": torch.get_num_threads(), "lora_rank": base.text.lora_rank}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lora_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
