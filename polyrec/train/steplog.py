"""What the weighting did, step by step: JSON lines, TensorBoard event files and a PNG plot.

Written into the run directory: ``train_steps.jsonl`` (one record per step),
``tensorboard/`` (scalars ``loss/<task>`` and ``weight/<task>``; open with
``tensorboard --logdir RUN_DIR``) and ``weighting.png``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_step_log(run_dir: Path, tasks: list[str], losses: list[list[float]], weights: list[list[float]],
                   method: str) -> None:
    from tensorboardX import SummaryWriter  # imported here: only runs that are saved need it

    with (run_dir / "train_steps.jsonl").open("w") as out:
        for step, (loss, weight) in enumerate(zip(losses, weights), 1):
            out.write(json.dumps({"step": step, "loss": dict(zip(tasks, loss)),
                                  "weight": dict(zip(tasks, weight))}) + "\n")
    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        for step, (loss, weight) in enumerate(zip(losses, weights), 1):
            for task, value, w in zip(tasks, loss, weight):
                writer.add_scalar(f"loss/{task}", value, step)
                writer.add_scalar(f"weight/{task}", w, step)
    plot_steps(run_dir / "weighting.png", tasks, np.asarray(losses), np.asarray(weights), method)


def plot_steps(path: Path, tasks: list[str], losses: np.ndarray, weights: np.ndarray, method: str) -> None:
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    window = max(1, len(losses) // 100)  # smooth the per-batch noise over ~1% of training
    kernel = np.ones(window) / window
    steps = np.arange(window, len(losses) + 1)
    for t, task in enumerate(tasks):
        top.plot(steps, np.convolve(losses[:, t], kernel, "valid"), label=task)
        bottom.plot(steps, np.convolve(weights[:, t], kernel, "valid"), label=task)
    top.set(ylabel="task loss", yscale="log", title=f"weighting: {method}")
    bottom.set(ylabel="task weight / gradient scale", xlabel="training step")
    top.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
