"""The weighting interface: how per-task losses become gradients.

A method sees the per-task losses and the model, calls backward itself (once, or
once per task if it needs per-task gradients) and returns the task weights it used
(or, for methods that reshape gradients, each task's effective gradient scale), for
logging. It may own trainable parameters (they are optimized with the model).
The trainer knows nothing else about it.

Loss weights are reported on the scale of equal static weights (they sum to the number
of tasks), so runs of different methods plot on one axis.
"""
from __future__ import annotations

import inspect
import typing
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, create_model
from torch import nn

from polyrec.distributed import all_sum

# option types for a method's keyword arguments: they are checked when the config is read
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Weighting(nn.Module):
    """``tasks``: the config's task specs (name, kind, weight); keyword arguments after it
    are the method's ``weighting.options``, typed with pydantic-compatible annotations.
    ``needs_representation``: the method balances gradients at the shared representation,
    so it cannot run on an architecture that shares none (checked when the config is read);
    ``needs_parameter_grads``: it reads each task's gradient of every parameter, so it cannot run
    with sparse embedding gradients.
    ``priority``: each task's configured ``weight``, a factor on what the method computes;
    a method for which such a factor has no meaning sets ``honours_task_weights = False``
    and a config that sets task weights for it is refused.

    Across processes (:mod:`polyrec.distributed`), ``losses`` carry the whole batch's values
    and a method sums (``all_sum``) any statistic of per-task gradients that is a sum over rows;
    ``sums_gradients``: it also sums the model's gradients itself (else the trainer does).
    """

    needs_representation: bool = False
    needs_parameter_grads: bool = False   # per-task gradients of the parameters themselves (dense)
    sums_gradients: bool = False
    honours_task_weights: bool = True

    def __init__(self, tasks: list):
        super().__init__()
        self.n_tasks = len(tasks)
        self.register_buffer("priority", torch.tensor([float(t.weight) for t in tasks]))

    @classmethod
    def options_model(cls) -> type[BaseModel]:
        """A pydantic model of the method's options, from its keyword arguments and their types."""
        hints = typing.get_type_hints(cls.__init__, include_extras=True)
        params = list(inspect.signature(cls.__init__).parameters.values())[2:]   # after self, tasks
        return create_model(f"{cls.__name__}Options", __config__=ConfigDict(extra="forbid"),
                            **{p.name: (hints.get(p.name, Any), p.default) for p in params})

    def backward(self, losses: torch.Tensor, shared: torch.Tensor | None, model: nn.Module) -> torch.Tensor:
        """Accumulate gradients for ``losses`` [T], computed from the shared representation
        ``shared`` of the same forward pass; return the weights applied [T]."""
        raise NotImplementedError


def representation_grads(losses: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
    """Each task's gradient w.r.t. the shared representation ``rep``, flattened: [T, N] (this
    process's rows; their Gram matrix and squared norms add up over processes).

    Autograd only walks from each loss down to the representation (towers and gates),
    never through the shared body, so this costs a fraction of one backward pass.
    """
    # one vmapped backward for all tasks (grad_outputs = rows of the identity), not T calls
    grads = torch.autograd.grad(losses, rep, torch.eye(len(losses), device=losses.device), retain_graph=True, is_grads_batched=True,
                                allow_unused=True, materialize_grads=True)[0]
    return grads.flatten(1).float()   # float32 also when the forward pass ran in bfloat16


def task_gram(grads: torch.Tensor) -> torch.Tensor:
    """The whole batch's Gram matrix [T, T] of per-task representation gradients ``grads`` [T, N]."""
    return all_sum(grads @ grads.T)


def task_norms(grads: torch.Tensor) -> torch.Tensor:
    """The whole batch's norm [T] of each task's representation gradient (rows of ``grads`` [T, N])."""
    return all_sum(grads.pow(2).sum(1)).sqrt()


def weighted_backward(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One backward of Σ w_i ℓ_i with ``weights`` rescaled to sum to T (the scale of static weighting)."""
    weights = (weights * len(weights) / weights.sum()).detach()
    (weights * losses).sum().backward()
    return weights
