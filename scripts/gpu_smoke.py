"""GPU smoke test (scripts/gpu_smoke.sh): the paths that run only on a GPU, in under 3 minutes.

1. every weighting method trains 20 steps on cuda (and bf16 autocast for one), losses finite;
2. with two or more GPUs, torchrun × 2 on nccl (collectives on GPU tensors) writes one run;
3. LoRA text (text.mode lora) trained on cuda: scoring twice in eval mode encodes the catalog once.

Prints one line per check and a summary; exits 1 if any check failed, 0 (saying it skipped) on a
machine without a GPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def tables():
    from polyrec.data.synthetic import synthetic_tables
    # ~6,000 training interactions x 5 rows (4 negatives each), batches of 512: about 36 steps an epoch
    return synthetic_tables(300, 400, 7500, n_topics=20, seed=0)


def config(*overrides: str):
    from polyrec.config import Config
    from polyrec.data.synthetic import SYNTHETIC_CONFIG
    raw = {**SYNTHETIC_CONFIG, "train": {**SYNTHETIC_CONFIG["train"], "batch_size": 512, "device": "cuda"}}
    return Config.from_dict(raw, list(overrides))


def weighting_methods() -> list[str]:
    from polyrec.recommender import MultiTaskRecommender
    from polyrec.weighting import WEIGHTINGS
    failed = []
    data = tables()
    for method in sorted(WEIGHTINGS):
        for precision in ("fp32", "bf16") if method == "mgda_ub" else ("fp32",):
            result = MultiTaskRecommender(config(f"weighting.method={method}", f"train.precision={precision}")
                                          ).fit(data).result
            steps = len(result.step_losses)
            finite = bool(torch.isfinite(torch.tensor(result.step_losses)).all())
            ok = steps >= 20 and finite
            print(f"{'ok  ' if ok else 'FAIL'} weighting {method} ({precision}): {steps} steps on cuda, "
                  f"losses finite: {finite}, valid AUC {result.best_valid['click']['auc']:.3f}", flush=True)
            if not ok:
                failed.append(f"weighting {method}")
    return failed


def torchrun_nccl() -> list[str]:
    if torch.cuda.device_count() < 2:
        print(f"skip torchrun x 2 on nccl: {torch.cuda.device_count()} GPU (needs 2)", flush=True)
        return []
    from polyrec.data.synthetic import SYNTHETIC_CONFIG
    with tempfile.TemporaryDirectory() as tmp:
        data = tables()
        for name, frame in (("events", data.interactions), ("users", data.users), ("items", data.items)):
            frame.to_parquet(Path(tmp) / f"{name}.parquet")
        raw = {**SYNTHETIC_CONFIG, "data": {**SYNTHETIC_CONFIG["data"], "interactions": f"{tmp}/events.parquet",
                                            "users": f"{tmp}/users.parquet", "items": f"{tmp}/items.parquet"},
               "train": {**SYNTHETIC_CONFIG["train"], "batch_size": 512, "device": "cuda"}}
        (Path(tmp) / "cfg.yaml").write_text(json.dumps(raw))
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "polyrec", "train", "-c", f"{tmp}/cfg.yaml", "-o", f"{tmp}/run"],
                              capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
        ok = done.returncode == 0 and (Path(tmp) / "run" / "metrics.json").exists()
        print(f"{'ok  ' if ok else 'FAIL'} torchrun x 2 on nccl" + ("" if ok else f": {done.stderr[-2000:]}"),
              flush=True)
        return [] if ok else ["torchrun nccl"]


def lora_encodes_once() -> list[str]:
    from polyrec.recommender import MultiTaskRecommender
    cfg = config("text={item_template: '{title}', mode: lora, lora_rank: 2}", "train.batch_size=2048")
    rec = MultiTaskRecommender(cfg).fit(tables())
    encoder = rec.model.item_encoder
    calls, encode = [], type(encoder)._encode_catalog
    type(encoder)._encode_catalog = lambda self: calls.append(1) or encode(self)
    try:
        rec.model.train()   # as after training: the next scoring encodes the catalog, once
        rec.recommend("u1", k=5)
        rec.recommend("u2", k=5)
    finally:
        type(encoder)._encode_catalog = encode
    ok = len(calls) == 1
    print(f"{'ok  ' if ok else 'FAIL'} LoRA: two recommendations encoded the catalog {len(calls)} time(s)", flush=True)
    return [] if ok else ["lora encodes once"]


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu smoke: skipped, PyTorch sees no GPU (torch.cuda.is_available() is False)")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"gpu smoke on {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}",
          flush=True)
    start, failed = time.perf_counter(), []
    for check in (weighting_methods, torchrun_nccl, lora_encodes_once):
        try:
            failed += check()
        except Exception:   # report every check, not only the first that breaks
            traceback.print_exc()
            failed.append(check.__name__)
    print(f"gpu smoke: {'FAILED ' + ', '.join(failed) if failed else 'all passed'} "
          f"in {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
