"""The training loop: joint loss through a Weighting, early stopping on the validation split."""
from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from polyrec.config import TrainSpec
from polyrec.data.dataset import EvalData, Samples
from polyrec.errors import TrainingError
from polyrec.evaluate.evaluator import evaluate, mean_auc
from polyrec.models.layers import FeatureEmbedding
from polyrec.objective import Objective
from polyrec.train.log import TrainLog
from polyrec.weighting import Weighting


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict
    epochs: int
    history: list[dict] = field(default_factory=list)
    train_samples_per_s: float = 0.0
    step_losses: list[list[float]] = field(default_factory=list)   # per training step, per task
    step_weights: list[list[float]] = field(default_factory=list)


def seed_everything(seed: int, threads: int | None) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    if threads:
        torch.set_num_threads(threads)


class Optimizers:
    """Several optimizers stepped as one (SparseAdam for sparse embedding tables, Adam for the rest)."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)


@contextlib.contextmanager
def sparse_embeddings(model: torch.nn.Module, on: bool):
    """While training, the feature embedding tables give sparse gradients (with ``on``); yields
    their weights (empty when off)."""
    tables = [m.table for m in model.modules() if isinstance(m, FeatureEmbedding)] if on else []
    for table in tables:
        table.sparse = True
    try:
        yield [table.weight for table in tables]
    finally:
        for table in tables:
            table.sparse = False


def make_optimizer(model: torch.nn.Module, weighting: Weighting, spec: TrainSpec,
                   sparse: list[torch.nn.Parameter] = ()) -> Optimizers:
    """Adam over the model and the weighting's parameters; SparseAdam over ``sparse`` ones (which
    takes no weight decay: only the rows a batch reads move)."""
    chosen = {id(p) for p in sparse}
    dense = [p for p in list(model.parameters()) + list(weighting.parameters()) if id(p) not in chosen]
    optimizers = [torch.optim.Adam(dense, lr=spec.lr, weight_decay=spec.weight_decay)]
    if sparse:
        optimizers.append(torch.optim.SparseAdam(list(sparse), lr=spec.lr))
    return Optimizers(*optimizers)


def train_step(model: torch.nn.Module, objective: Objective, weighting: Weighting, optimizer: Optimizers,
               data: Samples, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the rows ``idx`` of ``data``; returns (task losses [T], task weights [T])."""
    losses, shared = objective.batch_losses(model, data, idx)
    weights = weighting.backward(losses, shared, model)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return losses.detach(), weights.detach()


def run_epoch(model: torch.nn.Module, objective: Objective, weighting: Weighting, optimizer: Optimizers,
              data: Samples, batch_size: int, generator: torch.Generator, progress: str | None = None,
              log: TrainLog | None = None):
    """One pass over ``data`` in shuffled batches taken by index from whole tensors.

    Returns (task losses [steps, T], task weights [steps, T], seconds).
    """
    model.train()
    n = len(data)
    # BatchNorm cannot train on a single row: a trailing batch of one is dropped.
    n_batches = n // batch_size + int(n % batch_size > 1)
    order = torch.randperm(n, generator=generator)
    step_losses, step_weights = [], []
    bar = tqdm(range(n_batches), desc=progress, disable=progress is None, leave=False, mininterval=0.5)
    start = time.perf_counter()
    for step in bar:
        losses, weights = train_step(model, objective, weighting, optimizer, data,
                                     order[step * batch_size:(step + 1) * batch_size])
        step_losses.append(losses)
        step_weights.append(weights)
        if log is not None:
            log.step(losses.tolist(), weights.tolist())
        if progress is not None and step % 20 == 0:
            bar.set_postfix({k: f"{v:.4f}" for k, v in zip(objective.names, losses.tolist())})
    return torch.stack(step_losses), torch.stack(step_weights), time.perf_counter() - start


def train(model: torch.nn.Module, objective: Objective, weighting: Weighting, train_data: Samples,
          valid: EvalData, n_items: int, spec: TrainSpec, log: TrainLog | None = None,
          on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train ``model`` in place; the weights of the best validation epoch are restored at the end.

    Selection uses the validation split only (mean AUC over binary tasks); the test
    split is never looked at here. ``log`` receives every step and epoch as they happen;
    ``on_epoch`` each epoch's record (it may raise to stop training, e.g. a pruned trial).
    """
    seed_everything(spec.seed, spec.threads)
    with sparse_embeddings(model, spec.sparse_embeddings) as sparse:
        optimizer = make_optimizer(model, weighting, spec, sparse)
        generator = torch.Generator().manual_seed(spec.seed)
        n = len(train_data)
        best_score, best_state, best_epoch, best_valid, waited = -np.inf, None, -1, {}, 0
        history, throughput, step_losses, step_weights = [], [], [], []
        for epoch in range(spec.max_epochs):
            losses, weights, seconds = run_epoch(model, objective, weighting, optimizer, train_data,
                                                 spec.batch_size, generator,
                                                 f"epoch {epoch + 1}/{spec.max_epochs}" if spec.progress else None, log)
            throughput.append(n / seconds)
            step_losses += losses.tolist()
            step_weights += weights.tolist()
            mean_loss = losses.mean(0)
            if not torch.isfinite(mean_loss).all():
                raise TrainingError(f"epoch {epoch + 1}: a task loss became non-finite "
                                         f"{dict(zip(objective.names, mean_loss.tolist()))}; lower train.lr")
            metrics = evaluate(model, objective, valid, n_items, [], ranking=False)
            score = mean_auc(metrics, objective)
            record = {"epoch": epoch + 1, "train_loss": dict(zip(objective.names, mean_loss.tolist())),
                      "task_weight": dict(zip(objective.names, weights.mean(0).tolist())),
                      "valid": metrics, "valid_mean_auc": score, "seconds": seconds, "samples_per_s": n / seconds}
            history.append(record)
            if log is not None:
                log.epoch(record)
            if on_epoch is not None:
                on_epoch(record)
            if spec.progress:
                losses_txt = " ".join(f"{k}={v:.4f}" for k, v in record["train_loss"].items())
                tqdm.write(f"epoch {epoch + 1}: loss {losses_txt} | valid mean AUC {score:.4f} | "
                           f"{n / seconds:,.0f} samples/s")
            if best_state is None or score > best_score:
                best_score, best_epoch, best_valid, waited = score, epoch + 1, metrics, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                waited += 1
                if waited >= spec.patience:
                    break
    model.load_state_dict(best_state)
    # steady state: the first epoch includes allocator and thread-pool warm-up
    steady = throughput[1:] or throughput
    return TrainResult(best_epoch, best_valid, len(history), history, float(np.median(steady)),
                       step_losses, step_weights)
