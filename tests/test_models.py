"""Every architecture trains (forward, backward) and shares exactly what it claims to share."""
import pytest
import torch

from polyrec.data.dataset import prepare
from polyrec.models.layers import GroupedLinear, GroupedMLP
from polyrec.models.network import model_for
from polyrec.objective import Objective
from tests.conftest import make_config, make_tables

ARCHS = ["single", "sharedbottom", "mmoe", "ple"]


def build(arch, **changes):
    cfg = make_config(model__arch=arch, **changes)
    data = prepare(make_tables(), cfg)
    model = model_for(cfg, data)
    return cfg, data, model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("esmm", [False, True])
def test_forward_backward_reaches_every_parameter(arch, esmm):
    cfg, data, model = build(arch, model__esmm=esmm)
    batch = data.train
    logits = model(batch.user, batch.item)
    assert logits.shape == (len(batch), 3)
    losses = Objective(cfg.tasks, esmm).losses(logits, batch.labels)
    assert losses.shape == (3,) and torch.isfinite(losses).all()
    losses.sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_ple_has_multiple_levels_and_task_experts():
    _, _, model = build("ple", model__ple_levels=3, model__ple_task_experts=2)
    body = model.nets[0].body
    assert len(body.levels) == 3
    assert body.levels[0].n_experts == 3 * 2 + 1
    assert len(body.levels[0].gates) == 4 and len(body.levels[-1].gates) == 3  # shared gate except at the top


def test_single_task_baseline_shares_nothing():
    cfg, data, model = build("single")
    logits = model(data.train.user, data.train.item)
    Objective(cfg.tasks).losses(logits, data.train.labels)[0].backward()
    touched = {name.split(".")[1] for name, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    assert touched == {"0"}  # only the first task's network received gradient


def test_grouped_linear_equals_independent_linears():
    torch.manual_seed(0)
    layer = GroupedLinear(5, 3, groups=4)
    x_shared, x_grouped = torch.randn(7, 5), torch.randn(7, 4, 5)
    for g in range(4):
        ref = torch.nn.functional.linear
        w, b = layer.weight[g].T, layer.bias[g]
        assert torch.allclose(layer(x_shared)[:, g], ref(x_shared, w, b), atol=1e-6)
        assert torch.allclose(layer(x_grouped)[:, g], ref(x_grouped[:, g], w, b), atol=1e-6)


def test_grouped_mlp_batchnorm_is_per_group():
    torch.manual_seed(0)
    mlp = GroupedMLP(6, [4], groups=2).train()
    x = torch.randn(32, 2, 6)
    out = mlp(x)
    # each group's BN sees only its own channels: scaling group 1's input leaves group 0 unchanged
    x2 = x.clone()
    x2[:, 1] *= 10
    assert torch.allclose(mlp(x2)[:, 0], out[:, 0], atol=1e-5)


def test_esmm_loss_is_entire_space_product():
    tasks = make_config().tasks
    logits = torch.tensor([[0.0, 0.0, 3.0], [2.0, -1.0, 4.0]])
    labels = torch.tensor([[0.0, float("nan"), float("nan")], [1.0, 1.0, 4.0]])
    plain = Objective(tasks, esmm=False).losses(logits, labels)
    esmm = Objective(tasks, esmm=True).losses(logits, labels)
    bce = torch.nn.functional.binary_cross_entropy
    # plain: buy is learned only on the clicked row, as p(buy | click)
    assert plain[1] == pytest.approx(bce(torch.sigmoid(torch.tensor(-1.0)), torch.tensor(1.0)).item(), rel=1e-5)
    # ESMM: p(click)·p(buy) against click∧buy on both rows
    p = torch.sigmoid(logits[:, 0]) * torch.sigmoid(logits[:, 1])
    assert esmm[1] == pytest.approx(bce(p, torch.tensor([0.0, 1.0])).item(), rel=1e-5)
    assert plain[2] == pytest.approx(esmm[2].item()) == pytest.approx(0.0)  # regression masked to the clicked row
    both = Objective(tasks, esmm=True, conditional_weight=0.5).losses(logits, labels)
    assert both[1] == pytest.approx((esmm[1] + 0.5 * plain[1]).item(), rel=1e-6)


def test_per_row_reduction_weighs_a_task_by_the_rows_it_labels():
    tasks = make_config().tasks
    torch.manual_seed(0)
    logits = torch.randn(10, 3)
    labels = torch.tensor([[1.0, 1.0, 4.0], [1.0, 0.0, 2.0]] + [[0.0, float("nan"), float("nan")]] * 8)
    per_task = Objective(tasks).losses(logits, labels)
    per_row = Objective(tasks, reduction="per_row").losses(logits, labels)
    assert per_row[0] == pytest.approx(per_task[0].item())             # click labels every row
    assert per_row[1] == pytest.approx(per_task[1].item() * 2 / 10)    # buy and stars label 2 rows of 10
    assert per_row[2] == pytest.approx(per_task[2].item() * 2 / 10)
    assert Objective.from_config(make_config(train__loss_reduction="per_row")).reduction == "per_row"


def test_sparse_embedding_updates_touch_only_the_rows_a_batch_reads():
    from polyrec.train.trainer import make_optimizer, sparse_embeddings, train_step
    from polyrec.weighting import build_weighting

    config = make_config(train__sparse_embeddings=True)
    data = prepare(make_tables(), config)
    objective = Objective.from_config(config)
    weighting = build_weighting(config.weighting, config.tasks)

    def rows_read(batch):
        read = torch.zeros(model.nets[0].embedding.table.num_embeddings, dtype=torch.bool)
        cat, multi, _, _, _ = model.tables(data.train.user[batch], data.train.item[batch])
        read[cat.flatten()] = True
        for m in multi:
            read[m[m >= 0]] = True
        return read

    first, second = torch.arange(32), torch.arange(32, 64)
    for sparse in (True, False):
        torch.manual_seed(0)
        model = model_for(config, data)
        table = model.nets[0].embedding.table
        with sparse_embeddings(model, sparse) as tables:
            optimizer = make_optimizer(model, weighting, config.train, tables)
            train_step(model, objective, weighting, optimizer, data.train, first)
            before, towers = table.weight.detach().clone(), model.nets[0].towers.linears[0].weight.detach().clone()
            train_step(model, objective, weighting, optimizer, data.train, second)
        moved = (table.weight.detach() != before).any(1)
        earlier_only = rows_read(first) & ~rows_read(second)
        assert earlier_only.any() and moved[rows_read(second)].all()
        assert not torch.equal(model.nets[0].towers.linears[0].weight, towers)
        # dense Adam's momentum moves rows the step did not read; sparse updates leave them as they were
        assert moved[earlier_only].any() != sparse
        assert not moved[~rows_read(first) & ~rows_read(second)].any()
        assert not table.sparse                                             # the flag is off after training


def test_sparse_embeddings_refuse_per_parameter_gradient_methods():
    with pytest.raises(Exception, match="sparse embedding gradients do not support"):
        make_config(train__sparse_embeddings=True, weighting__method="pcgrad")


@pytest.mark.parametrize("method", ["static", "mgda_ub"])
def test_bf16_autocast_runs_the_forward_pass_in_bfloat16_and_keeps_float32_weights(method):
    from polyrec.train.trainer import make_optimizer, train_step
    from polyrec.weighting import build_weighting

    config = make_config(train__precision="bf16", weighting__method=method)
    data = prepare(make_tables(), config)
    model, objective = model_for(config, data), Objective.from_config(config)
    weighting = build_weighting(config.weighting, config.tasks)
    optimizer = make_optimizer(model, weighting, config.train)
    seen = []
    model.nets[0].towers.linears[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    before = model.nets[0].towers.linears[0].weight.detach().clone()
    losses, weights = train_step(model, objective, weighting, optimizer, data.train, torch.arange(64), bf16=True)
    assert seen == [torch.bfloat16] and losses.dtype == torch.float32 and torch.isfinite(losses).all()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not torch.equal(model.nets[0].towers.linears[0].weight, before)


def test_training_on_a_gpu_that_is_not_there_is_refused():
    from polyrec.errors import ConfigError
    from polyrec.recommender import MultiTaskRecommender

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="train.device is cuda but PyTorch sees no GPU"):
        MultiTaskRecommender(make_config(train__device="cuda")).fit(make_tables())
