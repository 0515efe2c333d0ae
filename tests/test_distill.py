"""Distillation: the losses on known cases, and teacher → student end to end."""
import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from polyrec.cli import app
from polyrec.config import ConfigError
from polyrec.distill import distill, student_config
from polyrec.distill.distiller import unseen_pairs, with_unlabeled_pairs
from polyrec.distill.objective import (
    listwise_loss,
    pairwise_loss,
    similarity_loss,
    soft_label_losses,
)
from polyrec.recommender import MultiTaskRecommender
from tests.conftest import make_config, make_tables
from tests.helpers import write_own_data

runner = CliRunner()


def test_soft_labels_are_minimal_at_the_teachers_predictions():
    teacher = torch.tensor([[2.0, -1.0, 3.5], [-0.5, 0.3, 4.0]])
    binary = torch.tensor([True, True, False])
    at_teacher = soft_label_losses(teacher, teacher, binary, temperature=2.0)
    moved = soft_label_losses(teacher + 0.3, teacher, binary, temperature=2.0)
    assert (moved > at_teacher).all()
    assert at_teacher[2] == 0  # regression: squared error to the teacher's value
    student = teacher.clone().requires_grad_()
    soft_label_losses(student, teacher, binary, 2.0).sum().backward()
    assert torch.allclose(student.grad, torch.zeros_like(student), atol=1e-6)


def test_ranking_losses_follow_the_teachers_order():
    teacher = torch.tensor([[3.0, 1.0, 2.0]])
    assert listwise_loss(teacher.clone(), teacher) == pytest.approx(0.0, abs=1e-6)
    same_order, reversed_order = torch.tensor([[1.0, -1.0, 0.0]]), torch.tensor([[-1.0, 1.0, 0.0]])
    for loss in (listwise_loss, pairwise_loss):
        assert loss(same_order, teacher) < loss(reversed_order, teacher)
    # RankNet by hand: pairs (0>2), (0>1), (2>1) with student margins 1, 2, 1
    expected = torch.nn.functional.softplus(-torch.tensor([1.0, 2.0, 1.0])).mean()
    assert torch.allclose(pairwise_loss(same_order, teacher), expected)


def test_hidden_matching_compares_similarities_whatever_the_widths():
    torch.manual_seed(0)
    teacher = torch.randn(16, 3, 8)                                    # e.g. MMoE experts [B, E, H]
    rotation = torch.linalg.qr(torch.randn(24, 24)).Q
    same_geometry = 2.0 * teacher.flatten(1) @ rotation                # rotated and rescaled: same cosines
    assert similarity_loss(same_geometry, teacher) == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(16, 5, requires_grad=True)                   # a narrower student
    optimizer = torch.optim.SGD([student], lr=5.0)
    before = similarity_loss(student, teacher).item()
    for _ in range(300):
        optimizer.zero_grad()
        similarity_loss(student, teacher).backward()
        optimizer.step()
    assert similarity_loss(student, teacher).item() < before / 2


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distill")
    cfg = write_own_data(folder, make_tables())
    # a teacher with something to pass on: at the default rate, 3 epochs leave it almost constant
    out = runner.invoke(app, ["train", "-c", str(cfg), "--set", "train.max_epochs=3", "--set", "train.lr=0.01",
                              "-o", str(folder / "teacher")])
    assert out.exit_code == 0, out.output
    return folder, folder / "teacher"


def write_student(folder, **distill_options):
    path = folder / "student.yaml"
    path.write_text(yaml.safe_dump({"model": {"arch": "sharedbottom", "embed_dim": 2, "expert_dims": [8]},
                                    "distill": {"ranking_candidates": 6, "ranking_top": 2, "ranking_users": 4,
                                                **distill_options}}))
    return path


def test_cli_distill_writes_a_normal_run_directory(teacher_run):
    folder, teacher = teacher_run
    student_yaml = write_student(folder, ranking_weight=1.0, unlabeled_per_user=3, hidden_weight=1.0)
    out = runner.invoke(app, ["distill", "--teacher", str(teacher), "-c", str(student_yaml),
                              "-o", str(folder / "student")])
    assert out.exit_code == 0, out.output
    metrics = json.loads((folder / "student" / "metrics.json").read_text())
    teacher_metrics = json.loads((teacher / "metrics.json").read_text())
    assert metrics["serving_params"] < teacher_metrics["serving_params"] / 3
    assert runner.invoke(app, ["evaluate", str(folder / "student")]).exit_code == 0
    rec = runner.invoke(app, ["recommend", str(folder / "student"), "--user", "u3", "-k", "3"])
    assert rec.exit_code == 0 and "Item" in rec.output


def test_student_learns_the_teachers_predictions(teacher_run):
    folder, teacher_dir = teacher_run
    teacher = MultiTaskRecommender.load(teacher_dir)
    cfg = student_config(teacher.config, write_student(folder, soft_weight=1.0, unlabeled_per_user=5),
                         ["train.max_epochs=8"])
    distilled = distill(teacher, cfg, make_tables())
    plain = MultiTaskRecommender(cfg).fit(make_tables())
    test = teacher.test.samples
    users = [teacher.catalog.user_ids[u] for u in test.user]
    items = [teacher.catalog.item_ids[i] for i in test.item]
    target = teacher.predict(users, items)["click"].to_numpy()
    agreement = {name: np.corrcoef(target, rec.predict(users, items)["click"].to_numpy())[0, 1]
                 for name, rec in (("distilled", distilled), ("plain", plain))}
    assert agreement["distilled"] > max(0.5, agreement["plain"])


def test_unlabeled_pairs_are_unseen_and_carry_no_labels():
    from polyrec.data.dataset import prepare
    cfg = make_config()
    data = prepare(make_tables(), cfg)
    extended = with_unlabeled_pairs(data.train, unseen_pairs(data), 4, seed=0)
    extra = slice(len(data.train), None)
    assert len(extended) == len(data.train) + 4 * len(data.catalog.user_ids)
    assert torch.isnan(extended.labels[extra]).all()
    for user, item in zip(extended.user[extra].tolist(), extended.item[extra].tolist()):
        assert item not in set(data.user_history.get(user, []).tolist())


def test_new_items_join_the_unlabeled_pairs_and_the_students_vocabulary():
    from polyrec.data.dataset import prepare
    from polyrec.data.features import OOV
    cfg = make_config(data__cold_items=0.2)
    data = prepare(make_tables(), cfg)
    cold = set(data.cold_items.tolist())
    oov = data.encoder.offsets["item"] + OOV
    column = [s.name for s in data.encoder.side_specs("item", "cat")].index("item")
    assert (data.items.cat[data.cold_items, column] == oov).all()     # no training row shows them
    assert not cold & set(with_unlabeled_pairs(data.train, unseen_pairs(data), 8, seed=0).item.tolist())
    new_items = torch.zeros(len(data.catalog.user_ids), len(data.catalog.item_ids), dtype=torch.bool)
    new_items[:, data.cold_items] = True
    data = data.with_train(with_unlabeled_pairs(data.train, new_items, 4, seed=0))
    assert cold <= set(data.train.item.tolist())
    assert (data.items.cat[data.cold_items, column] != oov).all()
    assert len(set(data.items.cat[:, column].tolist())) == len(data.catalog.item_ids)


def test_student_must_keep_the_teachers_split_and_tasks(teacher_run):
    folder, teacher_dir = teacher_run
    teacher = MultiTaskRecommender.load(teacher_dir)
    with pytest.raises(ConfigError, match="data section"):
        distill(teacher, student_config(teacher.config, write_student(folder), ["data.seed=7"]), make_tables())
    distill(teacher, student_config(teacher.config, write_student(folder), ["train.seed=7", "train.max_epochs=1"]),
            make_tables())   # the student's own initialisation may differ
    with pytest.raises(ConfigError, match="tasks"):
        distill(teacher, student_config(teacher.config, write_student(folder), ["tasks=[{name: click, kind: binary}]"]),
                make_tables())
    with pytest.raises(ConfigError, match="text"):
        distill(teacher, student_config(teacher.config, write_student(folder),
                                        ["text.item_template={name}"]), make_tables())
    with pytest.raises(ConfigError, match="shares none"):
        distill(teacher, student_config(teacher.config, write_student(folder, hidden_weight=1.0),
                                        ["model.arch=single"]), make_tables())


def test_student_file_overrides_the_teachers_config_key_by_key(tmp_path):
    teacher = make_config(model__oov_dropout="{item: 0.2}", model__dropout=0.3)
    path = tmp_path / "student.yaml"
    path.write_text("model: {embed_dim: 2, oov_dropout: {}}\n")
    student = student_config(teacher, path)
    assert (student.model.embed_dim, student.model.dropout, student.model.oov_dropout) == (2, 0.3, {})
    assert student.tasks == teacher.tasks and student.data == teacher.data


@pytest.mark.parametrize("method, options", [("multibalance", "{}"), ("mgda_ub", "{normalize: l2}")])
def test_ranking_distillation_balances_the_batch_representation(teacher_run, method, options):
    """The ranking term runs a second forward pass; the weighting must still balance the batch's
    own shared representation: every task has a gradient there, and the weights equal those
    computed without the ranking term (which does not depend on that representation)."""
    from polyrec.data.dataset import prepare
    from polyrec.distill.distiller import ranking_candidates
    from polyrec.distill.objective import DistillObjective
    from polyrec.evaluate.evaluator import predict_logits
    from polyrec.models.network import model_for
    from polyrec.weighting import build_weighting
    from polyrec.weighting.base import representation_grads
    folder, teacher_dir = teacher_run
    teacher = MultiTaskRecommender.load(teacher_dir)
    cfg = student_config(teacher.config, write_student(folder, ranking_weight=1.0),
                         [f"weighting.method={method}", f"weighting.options={options}"])
    data = prepare(make_tables(), cfg)
    torch.manual_seed(0)
    model = model_for(cfg, data).eval()   # no dropout: repeatable
    candidates, scores = ranking_candidates(teacher, unseen_pairs(data), cfg.distill, 0, seed=0)
    teacher_logits = predict_logits(teacher.model, data.train.user, data.train.item)
    idx = torch.arange(64)

    def weights_and_grads(ranking_weight):
        spec = cfg.distill.model_copy(update={"ranking_weight": ranking_weight})
        objective = DistillObjective(MultiTaskRecommender(cfg).objective, spec, teacher_logits, candidates, scores,
                                     0, seed=0)
        losses, shared = objective.batch_losses(model, data.train, idx)
        grads = representation_grads(losses, shared)
        return build_weighting(cfg.weighting, cfg.tasks).backward(losses, shared, model), grads

    with_ranking, grads = weights_and_grads(1.0)
    without_ranking, plain_grads = weights_and_grads(0.0)
    assert (grads.norm(dim=1) > 0).all()                     # every task reaches the shared layer
    assert torch.allclose(grads, plain_grads, atol=1e-6)
    assert torch.allclose(with_ranking, without_ranking, atol=1e-5)


def test_the_ranking_term_reads_the_train_period_history(monkeypatch):
    """The teacher ranked each user's candidates as of the end of the train period; the student's
    ranking term scores them from there too, not from the valid-period history known now."""
    from polyrec.data.dataset import prepare
    from polyrec.models.network import MultiTaskModel
    cfg = make_config(history="{}", train__max_epochs=1)
    teacher = MultiTaskRecommender(cfg).fit(make_tables())
    student = cfg.with_overrides(["model.arch=sharedbottom", "distill.ranking_weight=1.0", "distill.ranking_users=3",
                                  "distill.ranking_candidates=6", "distill.ranking_top=2"])
    read, forward = [], MultiTaskModel.forward

    def spy(self, user, item, history=None, stats=None):
        if self.training:   # the ranking term's pass (training batches go through forward_shared)
            read.append((user, history))
        return forward(self, user, item, history, stats)

    monkeypatch.setattr(MultiTaskModel, "forward", spy)
    distill(teacher, student, make_tables())
    histories = prepare(make_tables(), cfg).histories
    assert read and all(h is not None and torch.equal(h, torch.from_numpy(histories.train_spans(u.numpy())))
                        for u, h in read)


def test_a_killed_distillation_is_not_resumed_as_plain_training(teacher_run, monkeypatch):
    import polyrec.train.trainer as trainer
    folder, teacher = teacher_run
    calls, step = [], trainer.train_step

    def killed(*args):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("killed")
        return step(*args)

    monkeypatch.setattr(trainer, "train_step", killed)
    out = runner.invoke(app, ["distill", "--teacher", str(teacher), "-c", str(write_student(folder)), "--set",
                              "train.checkpoint_every=2", "-o", str(folder / "killed")])
    assert isinstance(out.exception, RuntimeError) and not (folder / "killed").exists()
    monkeypatch.setattr(trainer, "train_step", step)
    staging = next(folder.glob(".killed.partial-*"))
    before = sorted(p.name for p in staging.iterdir())
    resumed = runner.invoke(app, ["train", "--resume", str(folder / "killed")])
    assert resumed.exit_code == 2 and "distils the teacher" in resumed.stderr and str(teacher) in resumed.stderr
    assert sorted(p.name for p in staging.iterdir()) == before and not (folder / "killed").exists()
