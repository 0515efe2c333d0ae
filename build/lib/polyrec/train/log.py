"""Training evidence, written as training goes: a crash leaves everything up to that point.

Into a run's (staging) folder: ``train_log.jsonl`` (one record per epoch: task losses,
weights, validation metrics), ``train_steps.jsonl`` (one record per step: task losses and
weights), ``tensorboard/`` (scalars ``loss/<task>``, ``weight/<task>`` per step and
``valid/<task>/<metric>`` per epoch, at the step the epoch ended) and, when training
finishes, ``weighting.png``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


class TrainLog:
    def __init__(self, folder: str | Path, tasks: list[str], method: str):
        # imported here: only runs that log need it
        from tensorboardX import SummaryWriter

        self.folder, self.tasks, self.method = Path(folder), tasks, method
        self.folder.mkdir(parents=True, exist_ok=True)
        self._epochs = (self.folder / "train_log.jsonl").open("a")
        self._steps = (self.folder / "train_steps.jsonl").open("a")
        self._board = SummaryWriter(str(self.folder / "tensorboard"))
        self.steps = 0

    def rewind(self, step_losses: list, step_weights: list, history: list[dict]) -> None:
        """Continue a resumed run's log from its checkpoint: the records are rewritten from the
        checkpoint's (a crash may have lost or half-written the last lines, or logged steps the
        checkpoint does not hold), and TensorBoard drops the scalars after its last step."""
        from tensorboardX import SummaryWriter

        for out in (self._epochs, self._steps):
            out.seek(0)
            out.truncate()
        self.steps = 0
        for losses, weights in zip(step_losses, step_weights):
            self._write_step(losses, weights)
        for record in history:
            self._epochs.write(json.dumps(record) + "\n")
        self._board.close()
        self._board = SummaryWriter(str(self.folder / "tensorboard"), purge_step=self.steps + 1)
        self.flush()

    def _write_step(self, losses: list[float], weights: list[float]) -> None:
        self.steps += 1
        self._steps.write(json.dumps({"step": self.steps, "loss": dict(zip(self.tasks, losses)),
                                      "weight": dict(zip(self.tasks, weights))}) + "\n")

    def step(self, losses: list[float], weights: list[float]) -> None:
        self._write_step(losses, weights)
        step = self.steps
        for task, value, weight in zip(self.tasks, losses, weights):
            self._board.add_scalar(f"loss/{task}", value, step)
            self._board.add_scalar(f"weight/{task}", weight, step)

    def epoch(self, record: dict) -> None:
        self._epochs.write(json.dumps(record) + "\n")
        for task, metrics in record["valid"].items():
            for name, value in metrics.items():
                if task != "notes" and name != "rows" and math.isfinite(value):
                    self._board.add_scalar(f"valid/{task}/{name}", value, self.steps)
        self.flush()

    def flush(self) -> None:
        for out in (self._epochs, self._steps):
            out.flush()
        self._board.flush()

    def close(self, result=None) -> None:
        """Close the files; with the finished training's ``result`` (a TrainResult, which holds
        every step), draw ``weighting.png``."""
        self._epochs.close()
        self._steps.close()
        self._board.close()
        if result is not None and result.step_losses:
            plot_steps(self.folder / "weighting.png", self.tasks, np.asarray(result.step_losses),
                       np.asarray(result.step_weights), self.method)

    @classmethod
    def replay(cls, folder: Path, tasks: list[str], method: str, result) -> None:
        """Write a finished training's log (a TrainResult, kept in memory) into ``folder`` at once."""
        log, first = cls(folder, tasks, method), 0
        for record in result.history:   # each epoch's record says how many steps it took
            for s in range(first, first + record["steps"]):
                log.step(result.step_losses[s], result.step_weights[s])
            first += record["steps"]
            log.epoch(record)
        log.close(result)


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
