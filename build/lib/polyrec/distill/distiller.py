"""Teacher → student: label the student's training data with a trained teacher and fit the student.

The student trains on the same split as the teacher (same data section and seed, checked),
so the teacher has never seen the student's validation or test rows. A student with a
``text`` section reads the teacher's precomputed item and user text embeddings: no
language model runs while distilling or serving.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from polyrec.config import Config, DistillSpec, read_yaml
from polyrec.data.dataset import PreparedData, prepare
from polyrec.data.rows import Samples
from polyrec.data.sources import load_tables
from polyrec.data.tables import Tables
from polyrec.distill.objective import DistillObjective, ranking_log_score
from polyrec.errors import ConfigError, DataError
from polyrec.evaluate.evaluator import predict_logits
from polyrec.recommender import MultiTaskRecommender
from polyrec import distributed
from polyrec.train.trainer import seed_everything

# text settings that decide what the embeddings are; the student may change the rest (dim, adaptor)
_TEXT_INPUTS = ("model", "item_template", "user_template", "user_history", "whiten_dim", "mode")


def distill(teacher: MultiTaskRecommender, config: Config, tables: Tables | None = None,
            log_dir: str | Path | None = None) -> MultiTaskRecommender:
    """Train the student that ``config`` describes from ``teacher``; returns the fitted student
    (``log_dir``: where the training log goes as training runs)."""
    check_compatible(teacher, config)
    # the teacher's outputs and the pairs it labels are read on the CPU, so the student trains there
    config = config.with_overrides(["train.device=cpu"])
    spec = config.distill or DistillSpec()
    seed_everything(config.train.seed, config.train.threads)
    # rows carry histories and statistics when the teacher or the student reads them
    rows_config = config.model_copy(update={k: getattr(config, k) or getattr(teacher.config, k)
                                            for k in ("history", "stats", "text")})
    data = prepare(tables if tables is not None else load_tables(config.data), rows_config)
    if data.catalog.user_ids != teacher.catalog.user_ids or data.catalog.item_ids != teacher.catalog.item_ids:
        raise DataError("the student's data does not have the teacher's users and items: distill from the "
                        "tables the teacher was trained on")
    unseen = unseen_pairs(data)
    new_items = torch.zeros_like(unseen)
    new_items[:, torch.from_numpy(data.cold_items)] = True
    context = functools.partial(train_period_context, data, rows_config)
    train = with_unlabeled_pairs(data.train, unseen, spec.unlabeled_per_user, config.train.seed, context)
    train = with_unlabeled_pairs(train, new_items, spec.new_items_per_user, config.train.seed + 1, context)
    data = data.with_train(train)   # the vocabulary now covers the new items of the unlabeled pairs
    if config.text is not None:
        data = data.with_text(teacher.text)
    student = MultiTaskRecommender(config)
    rank_task = student.objective.names.index(config.eval.rank_by or
                                              next(t.name for t in config.tasks if t.kind == "binary"))
    candidates = scores = torch.empty(0, 0)
    candidate_context = {}
    if spec.ranking_weight:
        candidates, scores = ranking_candidates(teacher, unseen, spec, rank_task, config.train.seed, context)
        candidate_context = context(torch.arange(len(candidates)).repeat_interleave(candidates.shape[1]),
                                    candidates.flatten())
    teacher_logits = predict_logits(teacher.model, data.train.user, data.train.item, data.train.context())
    objective = DistillObjective(student.objective, spec, teacher_logits,
                                 candidates, scores, rank_task, config.train.seed,
                                 teacher.model if spec.hidden_weight else None, candidate_context)
    return student.fit_prepared(data, objective, log_dir)


def student_config(teacher: Config, path: Path, overrides: list[str] | None = None) -> Config:
    """The teacher's config with the student file's sections merged over it (nested keys
    replace one by one), then ``overrides``: a student file names only what differs."""
    return Config.from_dict(_merge(teacher.model_dump(), read_yaml(path)), overrides)


def _merge(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        nested = isinstance(value, dict) and value and isinstance(base.get(key), dict)
        base[key] = _merge(base[key], value) if nested else value   # an empty mapping clears the teacher's
    return base


def check_compatible(teacher: MultiTaskRecommender, config: Config) -> None:
    tasks = lambda c: [(t.name, t.kind, t.depends_on) for t in c.tasks]  # noqa: E731
    if tasks(config) != tasks(teacher.config):
        raise ConfigError(f"the student's tasks {tasks(config)} differ from the teacher's {tasks(teacher.config)}")
    if config.data != teacher.config.data:
        raise ConfigError("the student needs the teacher's data section (with data.seed, it fixes the split); "
                          "otherwise the teacher would have trained on the student's test rows")
    if distributed.world_size() > 1:
        raise ConfigError("distillation trains in one process: run polyrec distill without torchrun")
    if config.train.device == "cuda":
        raise ConfigError("distillation trains the student on the CPU (the teacher's outputs are read there): set "
                          "train.device to cpu or auto")
    hidden = config.distill is not None and config.distill.hidden_weight
    if hidden and "single" in (config.model.arch, teacher.config.model.arch):
        raise ConfigError("distill.hidden_weight matches shared representations, and model.arch 'single' shares "
                          "none: use sharedbottom, mmoe or ple for the teacher and the student, or hidden_weight 0")
    if config.text is not None:
        if teacher.config.text is None:
            raise ConfigError("the student has a text section but the teacher has no text embeddings to share")
        differ = [k for k in _TEXT_INPUTS if getattr(config.text, k) != getattr(teacher.config.text, k)]
        if differ or config.text.mode != "frozen":
            raise ConfigError(f"the student reads the teacher's text embeddings: text.{differ or ['mode']} must "
                              f"match the teacher's (frozen mode)")


def unseen_pairs(data: PreparedData) -> torch.Tensor:
    """[users, items] True where an item is neither in the user's train/valid history nor cold."""
    mask = torch.ones(len(data.catalog.user_ids), len(data.catalog.item_ids), dtype=torch.bool)
    for user, items in data.user_history.items():
        mask[user, torch.from_numpy(items)] = False
    mask[:, torch.from_numpy(data.cold_items)] = False
    return mask


def with_unlabeled_pairs(train: Samples, allowed: torch.Tensor, per_user: int, seed: int,
                         context: Callable[[torch.Tensor, torch.Tensor], dict] | None = None) -> Samples:
    """``train`` plus ``per_user`` random items per user where ``allowed`` [users, items], with no labels
    (and ``context(users, items)``: what the rows carry besides, see :func:`train_period_context`)."""
    per_user = min(per_user, int(allowed.sum(1).min()))
    if not per_user:
        return train
    generator = torch.Generator().manual_seed(seed)
    items = torch.multinomial(allowed.float(), per_user, generator=generator)   # [users, per_user]
    users = torch.arange(len(items))[:, None].expand_as(items)
    labels = torch.full((items.numel(), train.labels.shape[1]), float("nan"))
    added = context(users.flatten(), items.flatten()) if context is not None else {}
    return Samples(torch.cat([train.user, users.flatten()]), torch.cat([train.item, items.flatten()]),
                   torch.cat([train.labels, labels]), **{k: torch.cat([v, added[k]]) for k, v in train.context().items()})


def train_period_context(data: PreparedData, config: Config, users: torch.Tensor, items: torch.Tensor) -> dict:
    """For (user, item) pairs scored at the end of the train period (pairs a teacher labels for
    training): the user's whole train-period history and the pair's statistics then."""
    if data.histories is None:
        return {}
    return data.histories.train_events.context(config, users.numpy(), items.numpy(), None)


def ranking_candidates(teacher: MultiTaskRecommender, unseen: torch.Tensor, spec: DistillSpec, rank_task: int,
                       seed: int, context: Callable[[torch.Tensor, torch.Tensor], dict] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per user: the teacher's top unseen items and random unseen ones [users, C], with the
    teacher's ranking scores on them [users, C] (``context``: see :func:`with_unlabeled_pairs`)."""
    n_users, n_items = unseen.shape
    parent = teacher.objective.parent[rank_task]
    scores = torch.empty(n_users, n_items)
    for start in range(0, n_users, 64):
        users = torch.arange(start, min(start + 64, n_users))
        pairs, items = users.repeat_interleave(n_items), torch.arange(n_items).repeat(len(users))
        logits = predict_logits(teacher.model, pairs, items, context(pairs, items) if context is not None else None)
        scores[users] = ranking_log_score(logits, rank_task, parent).view(len(users), n_items)
    top = scores.masked_fill(~unseen, -np.inf).topk(spec.ranking_top, 1).indices
    rest = unseen.clone()
    rest.scatter_(1, top, False)
    generator = torch.Generator().manual_seed(seed)
    random = torch.multinomial(rest.float(), spec.ranking_candidates - spec.ranking_top, generator=generator)
    candidates = torch.cat([top, random], 1)
    return candidates, scores.gather(1, candidates)
