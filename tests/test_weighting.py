"""Weighting methods on small problems whose answer is known, and on MovieLens-100K."""
import json
import math

import pytest
import torch
from torch import nn

from polyrec.config import ConfigError, TaskSpec, WeightingSpec
from polyrec.weighting import WEIGHTINGS, build_weighting
from polyrec.weighting.base import representation_grads
from polyrec.weighting.mgda import min_norm_weights
from polyrec.weighting.pcgrad import project_conflicting
from tests.conftest import make_config


def regression_tasks(n):
    return [TaskSpec(name=f"t{i}", kind="regression") for i in range(n)]


class ToyModel(nn.Module):
    """A shared linear layer (the representation) and one linear head per task."""

    def __init__(self, n_tasks, in_dim=6, hidden=8):
        super().__init__()
        self.body = nn.Linear(in_dim, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(n_tasks))

    def forward_shared(self, x):
        rep = self.body(x)
        return torch.cat([head(rep) for head in self.heads], 1), rep

    def task_parameters(self):
        return set(self.heads.parameters())


def regression_problem(noise, scale, n=512, seed=0):
    """Task i: y_i = scale_i·(x·a_i) + noise_i·ε; a linear model can fit the signal exactly."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    signal = x @ torch.randn(6, len(noise), generator=g)
    y = torch.tensor(scale) * signal + torch.tensor(noise) * torch.randn(n, len(noise), generator=g)
    return x, y


def squared_errors(model, x, y):
    """Per-task mean squared errors [T] and the shared representation they came from."""
    out, rep = model.forward_shared(x)
    return ((out - y) ** 2).mean(0), rep


def fit(weighting, model, x, y, steps, lr=0.02):
    optimizer = torch.optim.Adam(list(model.parameters()) + list(weighting.parameters()), lr=lr)
    for _ in range(steps):
        losses, rep = squared_errors(model, x, y)
        weights = weighting.backward(losses, rep, model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return losses.detach(), weights


def test_pcgrad_removes_exactly_the_conflicting_component():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # dot = -1: they conflict
    projected = project_conflicting(g)
    assert torch.allclose(projected, torch.tensor([[0.5, 0.5], [0.0, 1.0]]))
    assert abs(projected[0] @ g[1]) < 1e-6 and abs(projected[1] @ g[0]) < 1e-6
    aligned = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert torch.equal(project_conflicting(aligned), aligned)  # no conflict: untouched


def test_pcgrad_writes_the_projected_sum_to_shared_parameters_only():
    torch.manual_seed(0)
    model, weighting = ToyModel(2), WEIGHTINGS["pcgrad"](regression_tasks(2))
    x, y = regression_problem([0.1, 0.1], [1.0, -1.0])
    losses, rep = squared_errors(model, x, y)
    shared = list(model.body.parameters())
    per_task = [torch.cat([g.flatten() for g in torch.autograd.grad(l, shared, retain_graph=True)]) for l in losses]
    head_grad = torch.autograd.grad(losses[0], model.heads[0].weight, retain_graph=True)[0]
    expected = project_conflicting(torch.stack(per_task)).sum(0)
    weighting.backward(losses, rep, model)
    assert torch.allclose(torch.cat([p.grad.flatten() for p in shared]), expected, atol=1e-6)
    assert torch.allclose(model.heads[0].weight.grad, head_grad)  # task layers: their own task's gradient


def test_uncertainty_gives_the_noisier_task_the_larger_variance():
    torch.manual_seed(0)
    model, weighting = ToyModel(2), WEIGHTINGS["uncertainty"](regression_tasks(2))
    x, y = regression_problem(noise=[0.3, 1.5], scale=[1.0, 1.0])
    losses, weights = fit(weighting, model, x, y, steps=800)
    variance = weighting.log_var.exp().detach()
    assert variance[1] > 10 * variance[0]
    # at the optimum of ½e^{-s}ℓ + ½s, σ² equals the task's mean squared error
    assert torch.allclose(variance, losses, rtol=0.15)
    assert weights[0] > 0.5 * 5  # the clean task's weight grew far above its start (0.5)


def test_uncertainty_uses_the_classification_form_for_binary_tasks():
    tasks = [TaskSpec(name="click", kind="binary"), TaskSpec(name="stars", kind="regression")]
    losses = torch.tensor([0.7, 1.2], requires_grad=True)
    assert torch.equal(WEIGHTINGS["uncertainty"](tasks).backward(losses, None, None), torch.tensor([1.0, 0.5]))


def test_gradnorm_equalizes_weighted_gradient_norms():
    torch.manual_seed(0)
    model = ToyModel(2)
    weighting = WEIGHTINGS["gradnorm"](regression_tasks(2), alpha=0.0)
    x, y = regression_problem(noise=[0.5, 5.0], scale=[1.0, 10.0])  # task 1's gradients ~10x larger
    fit(weighting, model, x, y, steps=600)
    losses, rep = squared_errors(model, x, y)
    norms = representation_grads(losses, rep).norm(dim=1)
    weighted = weighting.weights.detach() * norms
    assert weighted.max() / weighted.min() < 1.10  # within 10% of each other
    assert weighting.weights[0] > 5 * weighting.weights[1]


def test_mgda_min_norm_combination_matches_the_closed_form():
    def weights(grads):
        return min_norm_weights(torch.tensor(grads) @ torch.tensor(grads).T)
    # ‖α g1 + (1-α) g2‖² with g1 = (1, 0), g2 = (0, 2): α² + 4(1-α)², minimal at α = 4/5
    assert torch.allclose(weights([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0.8, 0.2]))
    # one gradient inside the other's direction and shorter: all weight on it
    assert torch.allclose(weights([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([1.0, 0.0]))
    # two unit vectors at 120°
    assert torch.allclose(weights([[1.0, 0.0], [-0.5, math.sqrt(3) / 2]]), torch.tensor([0.5, 0.5]), atol=1e-6)


def test_mgda_applies_the_min_norm_weights_at_the_representation():
    torch.manual_seed(0)
    model, weighting = ToyModel(2), WEIGHTINGS["mgda_ub"](regression_tasks(2), normalize="none")
    x, y = regression_problem([0.1, 0.1], [1.0, 3.0])
    losses, rep = squared_errors(model, x, y)
    grads = representation_grads(losses, rep)
    weights = weighting.backward(losses, rep, model)
    assert torch.allclose(weights, 2 * min_norm_weights(grads @ grads.T), atol=1e-5)


def test_multibalance_equalizes_representation_gradient_norms():
    torch.manual_seed(0)
    model, weighting = ToyModel(2), WEIGHTINGS["multibalance"](regression_tasks(2))
    x, y = regression_problem([0.1, 0.1], [1.0, 20.0])
    losses, rep = squared_errors(model, x, y)
    norms = representation_grads(losses, rep).norm(dim=1)
    weights = weighting.backward(losses, rep, model)
    assert norms[1] > 10 * norms[0]
    assert torch.allclose(weights[0] * norms[0], weights[1] * norms[1], rtol=1e-5)


def test_dwa_raises_the_weight_of_the_task_whose_loss_falls_slower():
    weighting = WEIGHTINGS["dwa"](regression_tasks(2), temperature=2.0, window=3)
    used = []
    for window in range(3):
        for _ in range(3):  # task 0 flat, task 1 halves every window
            used.append(weighting.backward(torch.tensor([1.0, 0.5 ** window], requires_grad=True), None, None))
    assert all(torch.equal(w, torch.ones(2)) for w in used[:6])  # equal until two windows are complete
    # then w = T·softmax(r / τ) with loss ratios r = (1, 0.5) between the last two windows
    expected = 2 * torch.softmax(torch.tensor([1.0, 0.5]) / 2.0, 0)
    assert torch.allclose(used[6], expected) and used[6][0] > used[6][1]


def test_famo_moves_weight_to_the_task_that_stopped_improving():
    weighting = WEIGHTINGS["famo"](regression_tasks(2), lr=0.5)
    for step in range(20):
        weighting.backward(torch.tensor([0.9 ** step, 1.0], requires_grad=True), None, None)
    z = torch.softmax(weighting.logits, 0)
    assert z[1] > z[0]  # task 1's loss is flat, task 0's falls: task 1 gains weight
    losses = torch.tensor([0.5, 2.0], requires_grad=True)
    weights = weighting.backward(losses, None, None)
    z = torch.softmax(weighting.logits, 0)  # after this step's update
    assert torch.allclose(weights.sum(), torch.tensor(2.0))
    # the model descends Σ z_i log ℓ_i: loss weights ∝ z_i / ℓ_i
    assert torch.allclose(weights[0] / weights[1], (z[0] / 0.5) / (z[1] / 2.0), rtol=1e-5)


@pytest.mark.parametrize("method", sorted(m for m, w in WEIGHTINGS.items() if w.needs_representation))
def test_representation_methods_need_a_shared_body_at_config_time(method):
    with pytest.raises(ConfigError, match="shares none"):
        make_config(model__arch="single", weighting__method=method)


@pytest.mark.parametrize("method", sorted(WEIGHTINGS))
def test_every_method_honours_task_weights_or_refuses_them(method):
    """A task weight of 3 triples that task's gradient in its own layers, or the config is refused."""
    def head_ratio(weights):
        torch.manual_seed(0)
        tasks = [TaskSpec(name=f"t{i}", kind="regression", weight=w) for i, w in enumerate(weights)]
        model, weighting = ToyModel(2), WEIGHTINGS[method](tasks)
        x, y = regression_problem([0.1, 0.1], [1.0, 2.0])
        losses, rep = squared_errors(model, x, y)
        weighting.backward(losses, rep, model)
        return model.heads[0].weight.grad.norm() / model.heads[1].weight.grad.norm()

    if not WEIGHTINGS[method].honours_task_weights:
        with pytest.raises(ConfigError, match="tasks\\[\\].weight has no meaning"):
            make_config(weighting__method=method, **{"tasks": "[{name: click, kind: binary, weight: 3}]"})
        return
    assert head_ratio([3.0, 1.0]) / head_ratio([1.0, 1.0]) == pytest.approx(3.0, rel=1e-4)


def test_unknown_method_or_option_is_a_config_error():
    with pytest.raises(ConfigError, match="choose one of"):
        build_weighting(WeightingSpec(method="gradvac"), regression_tasks(2))
    with pytest.raises(ConfigError, match=r"weighting.options.temp \(dwa\): Extra inputs"):
        build_weighting(WeightingSpec(method="dwa", options={"temp": 2}), regression_tasks(2))


@pytest.mark.parametrize("method, options, message", [
    ("gradnorm", "{alpha: abc}", r"weighting.options.alpha \(gradnorm\): Input should be a valid number"),
    ("famo", "{lr: .nan}", r"weighting.options.lr \(famo\): Input should be a finite number"),
    ("dwa", "{temperature: -5}", r"weighting.options.temperature \(dwa\): Input should be greater than 0"),
    ("dwa", "{window: 0.5}", r"weighting.options.window \(dwa\)"),
    ("multibalance", "{momentum: 1}", r"weighting.options.momentum \(multibalance\): Input should be less than 1"),
    ("mgda_ub", "{normalize: l1}", r"weighting.options.normalize \(mgda_ub\)"),
    ("static", "{weights: {clikc: 2}}", r"names unknown task\(s\) \['clikc'\]"),
])
def test_weighting_options_are_checked_when_the_config_is_read(method, options, message):
    with pytest.raises(ConfigError, match=message):
        make_config(weighting__method=method, weighting__options=options)
    make_config(weighting__method=method)   # the method itself is fine with its defaults


@pytest.fixture(scope="module")
def ml_prepared(ml100k, ml_config):
    from polyrec.data.dataset import prepare
    cfg = ml_config.with_overrides(["text=null", "model.oov_dropout={}", "train.max_epochs=1", "eval.ranking=false"])
    return cfg, prepare(ml100k, cfg)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(WEIGHTINGS))
def test_every_method_trains_mmoe_on_movielens_for_an_epoch(ml_prepared, method):
    from polyrec.recommender import MultiTaskRecommender
    cfg, data = ml_prepared
    rec = MultiTaskRecommender(cfg.with_overrides([f"weighting.method={method}"])).fit_prepared(data)
    steps = len(data.train) // cfg.train.batch_size + 1
    losses, weights = torch.tensor(rec.result.step_losses), torch.tensor(rec.result.step_weights)
    assert losses.shape == weights.shape == (steps, 3)
    assert torch.isfinite(losses).all() and torch.isfinite(weights).all() and (weights > 0).all()
    assert rec.result.best_valid["watch"]["auc"] > 0.75  # it learned, whatever the weights


def read_event_scalars(folder):
    """Tags and steps of the scalars in TensorBoard event files (TFRecord framing, Event protos)."""
    from tensorboardX.proto.event_pb2 import Event
    scalars = {}
    for path in folder.glob("events.out.tfevents.*"):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            length = int.from_bytes(data[offset:offset + 8], "little")
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(event.step)
    return scalars


def test_run_directory_logs_weights_and_losses_per_step(tmp_path):
    from typer.testing import CliRunner

    from polyrec.cli import app
    from tests.conftest import make_tables
    from tests.helpers import write_own_data
    cfg, run = write_own_data(tmp_path, make_tables()), tmp_path / "run"
    out = CliRunner().invoke(app, ["train", "-c", str(cfg), "--set", "weighting.method=uncertainty", "-o", str(run)])
    assert out.exit_code == 0, out.output
    steps = [json.loads(line) for line in (run / "train_steps.jsonl").read_text().splitlines()]
    epochs = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    from polyrec.config import Config
    from polyrec.data.dataset import prepare
    n = len(prepare(make_tables(), Config.from_yaml(cfg)).train)
    assert len(steps) == len(epochs) * (n // 64 + int(n % 64 > 1)) and len(epochs) >= 1   # every step, batch 64
    assert set(steps[0]["weight"]) == set(steps[0]["loss"]) == {"click", "buy", "stars"}
    assert steps[0]["weight"] == {"click": 1.0, "buy": 1.0, "stars": 0.5}  # Kendall's two forms, at σ = 1
    assert steps[-1]["weight"] != steps[0]["weight"]  # learned
    scalars = read_event_scalars(run / "tensorboard")
    per_step = {f"{kind}/{task}" for kind in ("loss", "weight") for task in ("click", "buy", "stars")}
    per_epoch = {"valid/click/auc", "valid/buy/auc", "valid/stars/rmse"}
    assert per_step | per_epoch <= set(scalars)
    assert scalars["weight/stars"] == list(range(1, len(steps) + 1))
    assert scalars["valid/click/auc"] == [len(steps) // len(epochs) * (e + 1) for e in range(len(epochs))]
    png = (run / "weighting.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
