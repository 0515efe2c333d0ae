"""The training loop: joint loss through a Weighting, early stopping on the validation split."""
from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from polyrec.config import TrainSpec
from polyrec.data.rows import EvalData, Samples
from polyrec.errors import ConfigError, RunError, TrainingError
from polyrec.evaluate.evaluator import evaluate, mean_auc
from polyrec.models.layers import FeatureEmbedding
from polyrec.objective import Objective
from polyrec import distributed
from polyrec.train.checkpoint import load_checkpoint, save_checkpoint
from polyrec.train.log import TrainLog
from polyrec.weighting import Weighting

if TYPE_CHECKING:
    from polyrec.data.stream import TrainStream


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


def training_device(spec: TrainSpec) -> torch.device:
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but PyTorch sees no GPU (torch.cuda.is_available() is False): "
                          "set train.device to auto or cpu, or install a CUDA build of torch")
    return torch.device("cuda" if spec.device != "cpu" and torch.cuda.is_available() else "cpu")


def train_step(model: torch.nn.Module, objective: Objective, weighting: Weighting, optimizer: Optimizers,
               data: Samples, idx: torch.Tensor, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the rows ``idx`` of ``data``, this process's part of the global batch
    (``bf16``: the forward pass under bfloat16 autocast); returns (task losses [T], task weights [T])."""
    with torch.autocast(next(model.parameters()).device.type, torch.bfloat16, enabled=bf16):
        losses, shared = objective.batch_losses(model, data, idx)
    losses = distributed.global_losses(losses)   # the whole batch's values (this process's gradients)
    weights = weighting.backward(losses, shared, model)
    if not weighting.sums_gradients:
        distributed.sum_gradients(model.parameters())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return losses.detach(), weights.detach()


def run_epoch(model: torch.nn.Module, objective: Objective, weighting: Weighting, optimizer: Optimizers,
              data: Samples | TrainStream, batch_size: int, generator: torch.Generator, progress: str | None = None,
              log: TrainLog | None = None, start: int = 0,
              after_step: Callable[[int, list[float], list[float]], None] | None = None, bf16: bool = False):
    """One pass over ``data`` (in-memory :class:`Samples` or a streamed
    :class:`~polyrec.data.stream.TrainStream`) in shuffled batches drawn from ``generator``, from
    batch ``start`` on; ``after_step(steps done, task losses, task weights)`` is called after each step.

    Returns (task losses [steps, T], task weights [steps, T], seconds).
    """
    model.train()
    step_losses, step_weights = [], []
    batches = data.batches(batch_size, generator, start)
    if data.per_process:   # processes reading their own rows may run out at different steps
        batches = distributed.together(batches)
    bar = tqdm(batches, desc=progress, disable=progress is None, leave=False, mininterval=0.5,
               total=data.n_batches(batch_size) - start)
    began = time.perf_counter()
    for step, (batch, rows) in enumerate(bar, start):
        # in-memory rows: every process draws the same global batch and takes its share of it;
        # streamed rows: each process's batches are its own already
        rows = rows if data.per_process else distributed.shard(rows)
        losses, weights = train_step(model, objective, weighting, optimizer, batch, rows, bf16)
        step_losses.append(losses.tolist())
        step_weights.append(weights.tolist())
        if log is not None:
            log.step(step_losses[-1], step_weights[-1])
        if progress is not None and step % 20 == 0:
            bar.set_postfix({k: f"{v:.4f}" for k, v in zip(objective.names, step_losses[-1])})
        if after_step is not None:
            after_step(step + 1, step_losses[-1], step_weights[-1])
    shape = (len(step_losses), len(objective.names))
    return (torch.tensor(step_losses).reshape(shape), torch.tensor(step_weights).reshape(shape),
            time.perf_counter() - began)


@dataclass
class LoopState:
    """Where training stands: what a checkpoint holds besides the model, optimizer and weighting."""
    epoch: int = 0                   # finished epochs
    step: int = 0                    # finished steps of the current epoch
    shuffle_rng: torch.Tensor | None = None   # the shuffle generator's state when the current epoch began
    global_rng: torch.Tensor | None = None    # torch's own generator (dropout) at the checkpoint
    cuda_rng: list[torch.Tensor] = field(default_factory=list)   # and the GPUs' when training on them
    epoch_seconds: float = 0.0       # time the current epoch ran before the checkpoint
    stopped: bool = False            # early stopping decided
    best_score: float = -np.inf
    best_state: dict | None = None
    best_epoch: int = -1
    best_valid: dict = field(default_factory=dict)
    waited: int = 0
    history: list[dict] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)
    step_losses: list[list[float]] = field(default_factory=list)
    step_weights: list[list[float]] = field(default_factory=list)


def _save(path: Path, state: LoopState, model: torch.nn.Module, optimizer: Optimizers,
          weighting: Weighting) -> None:
    state.global_rng = torch.get_rng_state()
    state.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    save_checkpoint(path, {"loop": vars(state), "model": model.state_dict(), "weighting": weighting.state_dict(),
                           "optimizers": [o.state_dict() for o in optimizer.optimizers]})


def _restore(path: Path, model: torch.nn.Module, optimizer: Optimizers, weighting: Weighting) -> LoopState:
    saved = load_checkpoint(path)
    try:
        model.load_state_dict(saved["model"])
        weighting.load_state_dict(saved["weighting"])
        for opt, opt_state in zip(optimizer.optimizers, saved["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        state = LoopState(**saved["loop"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise RunError(f"{path} does not match this run's model or settings ({str(err)[:200]}); train the run "
                       "again without --resume") from None
    torch.set_rng_state(state.global_rng)
    if state.cuda_rng:
        torch.cuda.set_rng_state_all(state.cuda_rng)
    return state


def train(model: torch.nn.Module, objective: Objective, weighting: Weighting, train_data: Samples | TrainStream,
          valid: EvalData, n_items: int, spec: TrainSpec, log: TrainLog | None = None,
          on_epoch: Callable[[dict], None] | None = None, checkpoint: Path | None = None,
          resume: bool = False) -> TrainResult:
    """Train ``model`` in place; the weights of the best validation epoch are restored at the end.

    Selection uses the validation split only (mean AUC over binary tasks); the test
    split is never looked at here. ``log`` receives every step and epoch as they happen;
    ``on_epoch`` each epoch's record (it may raise to stop training, e.g. a pruned trial).
    ``checkpoint``: a file the whole training state is saved to at each epoch's end and every
    ``spec.checkpoint_every`` steps. ``resume``: continue from that file, taking exactly the steps
    the uninterrupted run would have taken. Launched by torchrun, each process trains on its share
    of every batch (see :mod:`polyrec.distributed`).
    """
    seed_everything(spec.seed, spec.threads)
    device = training_device(spec)
    if distributed.world_size() > 1 and (spec.sparse_embeddings or resume):
        raise ConfigError("training in several processes (torchrun) does not support "
                          f"{'train.sparse_embeddings' if spec.sparse_embeddings else '--resume'} yet; train in one "
                          "process for it")
    model.to(device)
    weighting.to(device)
    with distributed.training(device):
        state = _train(model, objective, weighting, train_data, valid, n_items, spec, log, on_epoch, checkpoint,
                       resume)
    model.load_state_dict(state.best_state)
    model.cpu()   # evaluation, the bundle and serving read it on the CPU
    # steady state: the first epoch includes allocator and thread-pool warm-up
    steady = state.throughput[1:] or state.throughput
    return TrainResult(state.best_epoch, state.best_valid, len(state.history), state.history,
                       float(np.median(steady)), state.step_losses, state.step_weights)


def _train(model: torch.nn.Module, objective: Objective, weighting: Weighting, train_data: Samples | TrainStream,
           valid: EvalData, n_items: int, spec: TrainSpec, log: TrainLog | None,
           on_epoch: Callable[[dict], None] | None, checkpoint: Path | None, resume: bool) -> LoopState:
    with sparse_embeddings(model, spec.sparse_embeddings) as sparse:
        optimizer = make_optimizer(model, weighting, spec, sparse)
        generator = torch.Generator().manual_seed(spec.seed)
        state = LoopState(shuffle_rng=generator.get_state())
        if resume:
            state = _restore(checkpoint, model, optimizer, weighting)
            if log is not None:
                log.rewind(state.step_losses, state.step_weights, state.history)
        n = len(train_data)
        while state.epoch < spec.max_epochs and not state.stopped:
            first = len(state.step_losses) - state.step   # the epoch's first step in step_losses
            generator.set_state(state.shuffle_rng)
            began = time.perf_counter() - state.epoch_seconds

            def after_step(step: int, losses: list[float], weights: list[float]) -> None:
                state.step_losses.append(losses)
                state.step_weights.append(weights)
                every = spec.checkpoint_every
                if checkpoint is not None and every and len(state.step_losses) % every == 0:
                    state.step, state.epoch_seconds = step, time.perf_counter() - began
                    if log is not None:
                        log.flush()
                    _save(checkpoint, state, model, optimizer, weighting)

            run_epoch(model, objective, weighting, optimizer, train_data, spec.batch_size, generator,
                      f"epoch {state.epoch + 1}/{spec.max_epochs}" if spec.progress else None, log, state.step,
                      after_step, spec.precision == "bf16")
            seconds = time.perf_counter() - began
            _finish_epoch(state, model, objective, valid, n_items, spec, torch.tensor(state.step_losses[first:]),
                          torch.tensor(state.step_weights[first:]), seconds, n / seconds, log, on_epoch)
            state.shuffle_rng, state.step, state.epoch_seconds = generator.get_state(), 0, 0.0
            if checkpoint is not None:
                _save(checkpoint, state, model, optimizer, weighting)
    return state


def _finish_epoch(state: LoopState, model: torch.nn.Module, objective: Objective, valid: EvalData, n_items: int,
                  spec: TrainSpec, losses: torch.Tensor, weights: torch.Tensor, seconds: float, samples_per_s: float,
                  log: TrainLog | None, on_epoch: Callable[[dict], None] | None) -> None:
    """Validate after an epoch, record it, and keep the best weights or count towards stopping."""
    epoch = state.epoch + 1
    distributed.average_buffers(model)   # so that every process validates the same model
    mean_loss = losses.mean(0)
    if not torch.isfinite(mean_loss).all():
        raise TrainingError(f"epoch {epoch}: a task loss became non-finite "
                            f"{dict(zip(objective.names, mean_loss.tolist()))}; lower train.lr")
    metrics = evaluate(model, objective, valid, n_items, [], ranking=False)
    score = mean_auc(metrics, objective)
    record = {"epoch": epoch, "steps": len(losses), "train_loss": dict(zip(objective.names, mean_loss.tolist())),
              "task_weight": dict(zip(objective.names, weights.mean(0).tolist())),
              "valid": metrics, "valid_mean_auc": score, "seconds": seconds, "samples_per_s": samples_per_s}
    state.history.append(record)
    state.throughput.append(samples_per_s)
    state.epoch = epoch
    if log is not None:
        log.epoch(record)
    if on_epoch is not None:
        on_epoch(record)
    if spec.progress:
        losses_txt = " ".join(f"{k}={v:.4f}" for k, v in record["train_loss"].items())
        tqdm.write(f"epoch {epoch}: loss {losses_txt} | valid mean AUC {score:.4f} | {samples_per_s:,.0f} samples/s")
    if state.best_state is None or score > state.best_score:
        state.best_score, state.best_epoch, state.best_valid, state.waited = score, epoch, metrics, 0
        state.best_state = copy.deepcopy(model.state_dict())
    else:
        state.waited += 1
        state.stopped = state.waited >= spec.patience
