"""Data-parallel training across processes with ``torch.distributed``, launched by ``torchrun``.

Every process (rank) holds the whole model and data; each step takes one global batch (the
same shuffle on every rank) and every rank trains on its share of the batch's rows. What is
summed across ranks makes the step the one a single process would take with that batch:

- a task's loss is each rank's sum over its rows divided by the *global* row count (one
  all-reduce of the counts), so the ranks' losses add up to the single-process loss, and the
  model's gradients are summed (:func:`sum_gradients`);
- weighting methods see the global loss values (:func:`global_losses`); statistics they take of
  per-task gradients are summed where the single-process statistic is a sum over rows (the Gram
  matrix and squared norms at the shared representation, whose rows are split across ranks), and
  PCGrad sums each task's parameter gradient before projecting. Their own parameters' gradients
  are then the same on every rank and are not summed.

Not the same as one process: BatchNorm normalises each rank's rows by their own statistics
(PyTorch's SyncBatchNorm runs on GPUs only), and its running statistics are averaged across ranks
at each epoch's end so that every rank validates the same model; dropout draws differ per rank.
In one process every function here is the identity.
"""
from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist


def rank() -> int:
    """This process's rank (0 without torchrun); readable before the process group starts."""
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


_training = False
_device = torch.device("cpu")   # where the process group's collectives take their tensors


@contextlib.contextmanager
def training(device: torch.device):
    """While training: under torchrun, the process group is joined (once per process, gloo on the
    CPU, nccl on GPUs; left at exit) and the functions here act across processes. Outside, after
    training, every process works on its own (only the first writes the run)."""
    global _training, _device
    if world_size() > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(dist.destroy_process_group)
    _training, _device = world_size() > 1, device
    try:
        yield
    finally:
        _training = False


def active() -> bool:
    return _training


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks (a new tensor on ``tensor``'s device; ``tensor`` itself in
    one process). It is reduced on the training device: nccl reduces GPU tensors only, and counts
    and flags are made on the CPU."""
    if not active():
        return tensor
    total = tensor.detach().to(_device, copy=True)
    dist.all_reduce(total)
    return total.to(tensor.device)


def global_losses(losses: torch.Tensor) -> torch.Tensor:
    """This rank's share of the task losses [T] made to carry the global values, with gradients
    flowing into this rank's share only."""
    if not active():
        return losses
    return losses + (all_sum(losses) - losses.detach())


def shard(rows: torch.Tensor) -> torch.Tensor:
    """This rank's share of a global batch's ``rows``."""
    return rows[dist.get_rank()::dist.get_world_size()] if active() else rows


def together(batches: Iterator) -> Iterator:
    """``batches`` while every rank still has one: ranks that read their own files may hold different
    numbers of batches, and a collective call needs them all."""
    if not active():
        yield from batches
        return
    batches = iter(batches)
    while True:
        batch = next(batches, None)
        if int(all_sum(torch.tensor([batch is None], dtype=torch.int32))):
            return
        yield batch


def sum_gradients(parameters) -> None:
    """Sum the gradients of ``parameters`` over ranks, in one flat all-reduce. A parameter that got
    a gradient on some rank only (a layer no row of another rank's share reached) counts zero
    there; one that got none anywhere keeps none, as in one process."""
    if not active():
        return
    parameters = [p for p in parameters if p.requires_grad]
    present = all_sum(torch.tensor([p.grad is not None for p in parameters], dtype=torch.int32))
    parameters = [p for p, n in zip(parameters, present.tolist()) if n]
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in parameters])   # on the training device with the model
    dist.all_reduce(flat)
    offset = 0
    for p in parameters:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


def average_buffers(module: torch.nn.Module) -> None:
    """Average the floating-point buffers (BatchNorm's running statistics) over ranks."""
    if not active():
        return
    buffers = [b for name, b in module.named_buffers() if b.is_floating_point() and "running_" in name]
    for b in buffers:
        dist.all_reduce(b)
        b.div_(dist.get_world_size())
