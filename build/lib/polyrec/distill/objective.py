"""Distillation losses: the teacher's soft labels per task and its ranking of each user's candidates."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from polyrec.config import DistillSpec
from polyrec.objective import Objective


def soft_label_losses(student: torch.Tensor, teacher: torch.Tensor, binary: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Per-task [T] mean loss of student logits [B, T] against teacher logits [B, T]: binary tasks by
    cross-entropy to the teacher's tempered probabilities (× T², Hinton et al. 2015), regression
    tasks by squared error."""
    bce = F.binary_cross_entropy_with_logits(student / temperature, torch.sigmoid(teacher / temperature),
                                             reduction="none").mean(0) * temperature ** 2
    mse = ((student - teacher) ** 2).mean(0)
    return torch.where(binary, bce, mse)


def listwise_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher ‖ student) of the softmax over each row's candidates [U, C] (ListNet-style)."""
    target = torch.log_softmax(teacher / temperature, 1)
    return F.kl_div(torch.log_softmax(student / temperature, 1), target, log_target=True, reduction="batchmean")


def pairwise_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RankNet: for every candidate pair the teacher orders i above j, −log σ(s_i − s_j)."""
    above = teacher[:, :, None] > teacher[:, None, :]                  # [U, C, C]
    margin = student[:, :, None] - student[:, None, :]
    return F.softplus(-margin)[above].mean()


def similarity_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Hidden-representation matching without a projection, so any widths pair up: the batch's
    pairwise cosine similarities of the student's shared representation [B, ...] match the
    teacher's [B, ...] (similarity-preserving distillation, Tung & Mori 2019)."""
    s, t = F.normalize(student.flatten(1), dim=1), F.normalize(teacher.flatten(1), dim=1)
    return ((s @ s.T - t @ t.T) ** 2).mean()


def ranking_log_score(logits: torch.Tensor, task: int, parent: int | None) -> torch.Tensor:
    """log p of the ranking task [B] (for a dependent task: log p(parent) + log p(child))."""
    score = F.logsigmoid(logits[:, task])
    return score + F.logsigmoid(logits[:, parent]) if parent is not None else score


class DistillObjective(Objective):
    """The task losses mixed with the teacher's signals; scores and evaluation are unchanged.

    ``teacher_logits`` [N, T] are the teacher's outputs on the training rows. ``candidates``
    [U, C] are catalog items per user and ``candidate_scores`` [U, C] the teacher's ranking
    scores (log-probabilities of the ranking task) on them; ``candidate_context`` what those
    U·C pairs read besides (user-major, [U·C, ...] each: their train-period history spans and
    statistics, as the teacher scored them). ``teacher`` (the model, for hidden matching) runs on
    each batch to give its shared representation.
    """

    def __init__(self, base: Objective, spec: DistillSpec, teacher_logits: torch.Tensor, candidates: torch.Tensor,
                 candidate_scores: torch.Tensor, rank_task: int, seed: int, teacher: torch.nn.Module | None = None,
                 candidate_context: dict[str, torch.Tensor] | None = None):
        super().__init__(base.tasks, base.esmm, base.conditional_weight, base.reduction)
        self.spec, self.teacher_logits, self.rank_task, self.teacher = spec, teacher_logits, rank_task, teacher
        self.candidates, self.candidate_scores = candidates, candidate_scores
        self.candidate_context = candidate_context or {}
        self.binary = torch.tensor([t.kind == "binary" for t in self.tasks])
        self.generator = torch.Generator().manual_seed(seed)

    def batch_losses(self, model, data, idx):
        spec = self.spec
        context = data.context(idx)
        logits, shared = model.forward_shared(data.user[idx], data.item[idx], **context)
        soft = soft_label_losses(logits, self.teacher_logits[idx], self.binary, spec.temperature)
        losses = (1 - spec.soft_weight) * self.losses(logits, data.labels[idx]) + spec.soft_weight * soft
        if spec.hidden_weight:
            with torch.no_grad():
                self.teacher.eval()
                _, teacher_shared = self.teacher.forward_shared(data.user[idx], data.item[idx], **context)
            hidden = similarity_loss(shared, teacher_shared)
            losses = losses + spec.hidden_weight * hidden / len(losses)   # shared by the tasks equally
        if spec.ranking_weight:
            users = torch.randint(len(self.candidates), (spec.ranking_users,), generator=self.generator)
            items = self.candidates[users]                                              # [U, C]
            pairs = (users[:, None] * items.shape[1] + torch.arange(items.shape[1])).flatten()
            logits = model(users[:, None].expand_as(items).flatten(), items.flatten(),   # shared of this pass unused
                           **{k: v[pairs] for k, v in self.candidate_context.items()})
            scores = ranking_log_score(logits, self.rank_task, self.parent[self.rank_task])
            loss = listwise_loss if spec.ranking_loss == "listwise" else pairwise_loss
            ranking = loss(scores.view(items.shape), self.candidate_scores[users])
            losses = losses + spec.ranking_weight * F.one_hot(torch.tensor(self.rank_task), len(losses)) * ranking
        return losses, shared
