"""Scoring a split: pointwise metrics per task and full-catalog ranking per binary task."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from polyrec.data.rows import EvalData, Samples
from polyrec.evaluate import metrics as M
from polyrec.objective import Objective
from polyrec.serve.rerank import Diversity, Exposure, topk_items


@torch.no_grad()
def predict_logits(model: torch.nn.Module, user: torch.Tensor, item: torch.Tensor,
                   context: dict[str, torch.Tensor] | None = None, batch_size: int = 4096) -> torch.Tensor:
    """Outputs [N, T] in batches; ``context``: the rows' own moment (:meth:`Samples.context`);
    without it, every row reads what is known now."""
    model.eval()
    context = context or {}
    device = next(model.parameters()).device
    return torch.cat([model(user[a:a + batch_size].to(device), item[a:a + batch_size].to(device),
                            **{k: v[a:a + batch_size].to(device) for k, v in context.items()}).cpu()
                      for a in range(0, len(user), batch_size)]) if len(user) else torch.empty(0)


def evaluate_pointwise(model, objective: Objective, samples: Samples) -> dict[str, dict[str, float]]:
    """Per task on rows where it has a label; per joint on rows where its parent has one."""
    scores = {k: v.numpy() for k, v in objective.scores(predict_logits(model, samples.user, samples.item,
                                                                   samples.context())).items()}
    labels, users = samples.labels.numpy(), samples.user.numpy()
    out = {}
    for t, (task, parent) in enumerate(zip(objective.tasks, objective.parent)):
        rows = ~np.isnan(labels[:, t])
        y, s = labels[rows, t], scores[task.name][rows]
        if task.kind == "regression":
            out[task.name] = {"rmse": M.rmse(y, s), "mae": M.mae(y, s), "rows": int(rows.sum())}
            continue
        out[task.name] = {"auc": M.auc(y, s), "gauc": M.gauc(users[rows], y, s), "logloss": M.logloss(y, s),
                          "rows": int(rows.sum())}
        if parent is not None:
            rows = ~np.isnan(labels[:, parent])
            y = labels[rows, parent] * np.nan_to_num(labels[rows, t])
            s = scores[task.joint][rows]
            out[task.joint] = {"auc": M.auc(y, s), "gauc": M.gauc(users[rows], y, s), "logloss": M.logloss(y, s),
                               "rows": int(rows.sum())}
    return out


UNDEFINED = {"auc": "these rows hold one class only", "gauc": "no user has both a positive and a negative label here",
             "logloss": "no labelled rows", "rmse": "no labelled rows", "mae": "no labelled rows"}


def leave_out_undefined(metrics: dict) -> dict[str, str]:
    """Remove metrics that are undefined on the evaluated rows (NaN); returns why, by ``task.metric``."""
    notes = {}
    for task, values in metrics.items():
        for name in [m for m, v in values.items() if isinstance(v, float) and np.isnan(v)]:
            del values[name]
            notes[f"{task}.{name}"] = UNDEFINED.get(name, "undefined on these rows")
    return notes


def _pairs_by_row(rows: np.ndarray, items: np.ndarray):
    order = np.argsort(rows, kind="stable")
    return rows[order], items[order]


def evaluate_ranking(model, objective: Objective, data: EvalData, n_items: int, ks: list[int],
                     chunk_users: int = 256, progress: bool = False, per_user: dict | None = None,
                     candidates: torch.Tensor | None = None, exposure: Exposure | None = None,
                     diversity: Diversity | None = None, item_vectors: Callable[[torch.Tensor], torch.Tensor] | None = None
                     ) -> dict[str, dict[str, float]]:
    """Rank every catalog item not among the user's earlier interactions, for each binary task.

    Ground truth for a task: the split's interactions where its label (for a dependent
    task: parent and child labels) is 1; dependent tasks are ranked by p(parent)·p(child).
    ``per_user``: filled with each task's per-user values (user index, ``ndcg@K``).
    ``candidates`` [n_items] (bool): rank these items only (e.g. a new-arrivals shelf);
    ``exposure``: the lists reserve slots for new items (see :class:`~polyrec.serve.rerank.Exposure`);
    ``diversity``: the lists are re-ranked by MMR (:class:`~polyrec.serve.rerank.Diversity`).
    Beyond accuracy: coverage@K, novelty@K (item popularity from the train and valid
    interactions, add-one smoothed) and, with ``item_vectors`` (catalog indices → unit vectors, asked
    for the listed items only), intra-list diversity ild@K.
    """
    tasks = [t for t in objective.tasks if t.kind == "binary"]
    index = {t.name: i for i, t in enumerate(objective.tasks)}
    labels = torch.nan_to_num(data.interactions.labels)
    truth_of = {}
    for task in tasks:
        y = labels[:, index[task.name]]
        if task.depends_on:
            y = y * labels[:, index[task.depends_on]]
        truth_of[task.name] = y > 0
    users = torch.unique(data.interactions.user)
    row_of = torch.full((int(torch.cat([users, data.seen_user]).max()) + 1,), -1, dtype=torch.long)
    row_of[users] = torch.arange(len(users))
    seen_rows = row_of[data.seen_user]
    seen_rows, seen_items = _pairs_by_row(seen_rows[seen_rows >= 0].numpy(), data.seen_item[seen_rows >= 0].numpy())
    gt_rows, gt_items = row_of[data.interactions.user].numpy(), data.interactions.item.numpy()
    n_seen_users = len(torch.unique(data.seen_user))
    popularity = (torch.bincount(data.seen_item, minlength=n_items) + 1) / (n_seen_users + 1)
    acc = {t.name: M.RankingAccumulator(ks, n_items, item_vectors, popularity) for t in tasks}
    all_items = torch.arange(n_items)
    model.eval()
    for a in tqdm(range(0, len(users), chunk_users), desc="ranking the catalog for each user", unit="chunk",
                  disable=not progress, leave=False):
        chunk = users[a:a + chunk_users]
        n = len(chunk)
        logits = predict_logits(model, chunk.repeat_interleave(n_items), all_items.repeat(n))
        scores = objective.scores(logits)
        lo, hi = np.searchsorted(seen_rows, [a, a + n])
        excluded = torch.zeros(n, n_items, dtype=torch.bool)
        excluded[torch.from_numpy(seen_rows[lo:hi] - a), torch.from_numpy(seen_items[lo:hi])] = True
        if candidates is not None:
            excluded |= ~candidates
        in_chunk = (gt_rows >= a) & (gt_rows < a + n)
        for task in tasks:
            matrix = scores[objective.ranking_score_name(task)].view(n, n_items).masked_fill(excluded, -np.inf)
            truth = torch.zeros(n, n_items, dtype=torch.bool)
            hit = in_chunk & truth_of[task.name].numpy()
            truth[torch.from_numpy(gt_rows[hit] - a), torch.from_numpy(gt_items[hit])] = True
            acc[task.name].add(topk_items(matrix, max(ks), exposure, diversity), truth, chunk)
    if per_user is not None:
        per_user.update({name: a.per_user() for name, a in acc.items()})
    return {name: a.result() for name, a in acc.items()}


def evaluate(model, objective: Objective, data: EvalData, n_items: int, ks: list[int],
             ranking: bool = True, progress: bool = False,
             item_vectors: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Per-task (and joint) metrics, then ``ranking`` (``item_vectors``: see :func:`evaluate_ranking`);
    metrics undefined on these rows are left out, and ``notes`` says why."""
    out = evaluate_pointwise(model, objective, data.samples)
    notes = leave_out_undefined(out)
    if notes:
        out["notes"] = notes
    if ranking:
        out["ranking"] = evaluate_ranking(model, objective, data, n_items, ks, progress=progress,
                                          item_vectors=item_vectors)
    return out


def mean_auc(metrics: dict, objective: Objective) -> float:
    """Model selection criterion: mean AUC over the binary tasks."""
    values = [metrics[t.name].get("auc", np.nan) for t in objective.tasks if t.kind == "binary"]
    return float(np.nanmean(values)) if values else -float(np.mean([metrics[t.name]["rmse"] for t in objective.tasks]))
