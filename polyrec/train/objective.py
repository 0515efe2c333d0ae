"""Per-task losses and scores, with missing labels masked and ESMM's entire-space product."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from polyrec.config import TaskSpec

_EPS = 1e-7


class Objective:
    """Turns logits [B, T] and labels [B, T] (NaN = no label) into per-task losses [T].

    A dependent binary task (``depends_on``) is trained on its parent's positive rows
    only, as p(child | parent). With ``esmm`` it is instead trained over the entire
    sample space on p(parent)·p(child) against parent∧child (Ma et al., SIGIR 2018).
    """

    def __init__(self, tasks: list[TaskSpec], esmm: bool = False):
        self.tasks, self.esmm = tasks, esmm
        index = {t.name: i for i, t in enumerate(tasks)}
        self.parent = [index[t.depends_on] if t.depends_on else None for t in tasks]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def score_names(self) -> list[str]:
        """Names of what :meth:`scores` returns: every task, then every joint."""
        return self.names + [t.joint for t, p in zip(self.tasks, self.parent) if p is not None and t.kind == "binary"]

    def losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        has_label = ~torch.isnan(labels)
        y = torch.nan_to_num(labels)
        out = []
        for t, (task, parent) in enumerate(zip(self.tasks, self.parent)):
            z, mask = logits[:, t], has_label[:, t]
            if task.kind == "binary" and parent is not None and self.esmm:
                mask = has_label[:, parent]
                target = y[:, parent] * y[:, t]
                log_p = (F.logsigmoid(logits[:, parent]) + F.logsigmoid(z)).clamp(max=-_EPS)
                loss = -(target * log_p + (1 - target) * torch.log1p(-log_p.exp()))
            elif task.loss == "bce":
                loss = F.binary_cross_entropy_with_logits(z, y[:, t], reduction="none")
            elif task.loss == "mse":
                loss = (z - y[:, t]) ** 2
            else:
                loss = F.huber_loss(z, y[:, t], reduction="none")
            mask = mask.to(z.dtype)
            out.append((loss * mask).sum() / mask.sum().clamp(min=1))
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
