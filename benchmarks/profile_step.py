"""Where a training step's time goes, and how close it is to the machine's matmul throughput.

    python benchmarks/profile_step.py [--arch mmoe] [--steps 100]

Times the phases of a step (batch gather, forward + loss, backward, optimizer) on
MovieLens-100K, groups torch-profiler self time by kind of operator, counts the step's
matmul FLOPs (torch.utils.flop_counter) and compares the achieved rate with a plain
matmul of the step's largest shape measured on this machine. Writes
benchmarks/results/profile_<arch>.json.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from common import load_prepared, protocol_config, quickstart_config
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from polyrec.models.network import model_for
from polyrec.objective import Objective
from polyrec.train.trainer import make_optimizer, seed_everything
from polyrec.weighting import build_weighting

KINDS = {  # operator-name fragments -> reported kind
    "matmul": ("mm", "bmm", "addmm", "baddbmm", "linear"),
    "batch norm": ("batch_norm",),
    "relu": ("relu", "threshold", "clamp_min"),
    "copies / layout": ("copy_", "clone", "contiguous", "cat", "_to_copy"),
    "embedding gather": ("embedding", "index", "gather"),
    "optimizer": ("adam", "_foreach", "lerp", "addcdiv", "addcmul", "sqrt"),
}


def kind_of(name: str) -> str:
    op = name.split("::")[-1].lower()
    for kind, fragments in KINDS.items():
        if any(op == f or op.startswith(f + "_") or op.endswith(f) or f in op for f in fragments):
            return kind
    return "other elementwise / overhead"


def matmul_gflops(m: int, k: int, n: int, repeats: int = 200) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(20):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="mmoe")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()

    cfg = protocol_config(quickstart_config(), args.arch, 1)   # ID features only
    seed_everything(cfg.train.seed, cfg.train.threads)
    data = load_prepared(cfg)
    model = model_for(cfg, data).train()
    objective, weighting = Objective.from_config(cfg), build_weighting(cfg.weighting, cfg.tasks)
    optimizer = make_optimizer(model, weighting, cfg.train)
    order = torch.randperm(len(data.train))
    batch = cfg.train.batch_size
    phases = defaultdict(float)

    def step(s: int, timed: bool = False) -> None:
        marks = [time.perf_counter()]
        idx = order[(s * batch) % (len(order) - batch):][:batch]
        rows = data.train.subset(idx)
        marks.append(time.perf_counter())
        losses, shared = objective.batch_losses(model, rows, slice(None))
        marks.append(time.perf_counter())
        weighting.backward(losses, shared, model)
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if timed:
            for name, a, b in zip(("batch gather", "forward + loss", "backward", "optimizer"), marks, marks[1:]):
                phases[name] += (b - a) / args.steps

    for s in range(20):
        step(s)
    for s in range(args.steps):
        step(s, timed=True)
    step_ms = sum(phases.values()) * 1e3

    with FlopCounterMode(display=False) as counter:
        objective.losses(model(data.train.user[:batch], data.train.item[:batch]), data.train.labels[:batch]).sum() \
            .backward()
    optimizer.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for s in range(30):
            step(s)
    by_kind = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            by_kind[kind_of(event.key)] += event.self_cpu_time_total
    total = sum(by_kind.values())

    in_dim = model.nets[0].embedding.out_dim
    peak = matmul_gflops(batch, in_dim, cfg.model.expert_dims[0] * max(cfg.model.n_experts, 1))
    achieved = flops / (step_ms / 1e3) / 1e9
    result = {"arch": args.arch, "batch": batch, "threads": torch.get_num_threads(), "step_ms": round(step_ms, 2),
              "samples_per_s": round(batch / (step_ms / 1e3)),
              "phases_ms": {k: round(v * 1e3, 2) for k, v in phases.items()},
              "profiler_share": {k: round(v / total, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
              "matmul_gflop_per_step": round(flops / 1e9, 3), "achieved_gflops": round(achieved, 1),
              "machine_matmul_gflops": round(peak, 1),
              "matmul_bound_step_ms": round(flops / (peak * 1e9) * 1e3, 2)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"profile_{args.arch}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
