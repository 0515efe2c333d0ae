"""Tasks as data turned into per-task losses and scores, with missing labels masked and ESMM's
entire-space product; below both training and evaluation, which share it."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from polyrec.config import TaskSpec
from polyrec.distributed import all_sum

_EPS = 1e-7


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask.to(values.dtype)).sum()


class Objective:
    """Turns logits [B, T] and labels [B, T] (NaN = no label) into per-task losses [T].

    A dependent binary task (``depends_on``) is trained on its parent's positive rows
    only, as p(child | parent). With ``esmm`` it is instead trained over the entire
    sample space on p(parent)·p(child) against parent∧child (Ma et al., SIGIR 2018),
    optionally plus ``conditional_weight`` times the p(child | parent) loss.

    ``reduction``: ``per_task`` averages each task's loss over the rows it labels (every task
    weighs alike); ``per_row`` over all rows of the batch, so every labelled row weighs alike
    and a task weighs by its row count (what summing each task's loss over the batch does, as
    DeepCTR-Torch does, up to a constant factor).
    """

    def __init__(self, tasks: list[TaskSpec], esmm: bool = False, conditional_weight: float = 0.0,
                 reduction: str = "per_task"):
        self.tasks, self.esmm, self.conditional_weight = tasks, esmm, conditional_weight
        self.reduction = reduction
        index = {t.name: i for i, t in enumerate(tasks)}
        self.parent = [index[t.depends_on] if t.depends_on else None for t in tasks]

    @classmethod
    def from_config(cls, config) -> Objective:
        return cls(config.tasks, config.model.esmm, config.model.esmm_conditional_weight,
                   config.train.loss_reduction)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def score_names(self) -> list[str]:
        """Names of what :meth:`scores` returns: every task, then every joint."""
        return self.names + [t.joint for t, p in zip(self.tasks, self.parent) if p is not None and t.kind == "binary"]

    def batch_losses(self, model: torch.nn.Module, data, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-task losses [T] of the training rows ``idx`` of ``data`` and the shared representation
        they came from (what the trainer hands to the weighting)."""
        device = next(model.parameters()).device   # rows are gathered where the data lives, then moved
        context = {k: v.to(device) for k, v in data.context(idx).items()}
        logits, shared = model.forward_shared(data.user[idx].to(device), data.item[idx].to(device), **context)
        # float32 losses, also when the forward pass ran under bf16 autocast
        return self.losses(logits.float(), data.labels[idx].to(device)), shared

    def losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        has_label = ~torch.isnan(labels)
        y = torch.nan_to_num(labels)
        # a task's loss is a mean over the rows it labels, or with per_row over all rows (unlabelled
        # rows count 0, so a task weighs by how many rows it labels); the counts are the whole
        # batch's, also when it is split across processes
        counts = all_sum(torch.cat([has_label.sum(0), has_label.new_full((1,), len(labels), dtype=torch.long)]))
        count = (lambda t: counts[-1]) if self.reduction == "per_row" else (lambda t: counts[t].clamp(min=1))
        out = []
        for t, (task, parent) in enumerate(zip(self.tasks, self.parent)):
            z, mask = logits[:, t], has_label[:, t]
            if task.loss == "bce":
                loss = _masked_sum(F.binary_cross_entropy_with_logits(z, y[:, t], reduction="none"), mask) / count(t)
            elif task.loss == "mse":
                loss = _masked_sum((z - y[:, t]) ** 2, mask) / count(t)
            else:
                loss = _masked_sum(F.huber_loss(z, y[:, t], reduction="none"), mask) / count(t)
            if task.kind == "binary" and parent is not None and self.esmm:
                target = y[:, parent] * y[:, t]
                log_p = (F.logsigmoid(logits[:, parent]) + F.logsigmoid(z)).clamp(max=-_EPS)
                joint = -(target * log_p + (1 - target) * torch.log1p(-log_p.exp()))
                loss = _masked_sum(joint, has_label[:, parent]) / count(parent) + self.conditional_weight * loss
            out.append(loss)
        return torch.stack(out)

    def scores(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Probabilities for binary tasks, values for regression, and p(parent)·p(child) joints."""
        out = {}
        for t, task in enumerate(self.tasks):
            out[task.name] = torch.sigmoid(logits[:, t]) if task.kind == "binary" else logits[:, t]
        for t, (task, parent) in enumerate(zip(self.tasks, self.parent)):
            if parent is not None and task.kind == "binary":
                out[task.joint] = out[self.tasks[parent].name] * out[task.name]
        return out

    def ranking_score_name(self, task: TaskSpec) -> str:
        """Items are ranked for a dependent task by its entire-space probability."""
        return task.joint if task.depends_on and task.kind == "binary" else task.name
