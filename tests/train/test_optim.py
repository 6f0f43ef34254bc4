import pytest
import torch
from torch import nn

from ctr.recipe import OptimizerConfig
from ctr.registry import OPTIMIZERS
from ctr.train.optim import CombinedOptimizer, FusedLR, RowWiseAdagrad


def test_rowwise_adagrad_sparse_equals_dense_on_touched_rows():
    torch.manual_seed(0)
    init = torch.randn(6, 3)
    grad_rows, grad_vals = torch.tensor([1, 4, 1]), torch.randn(3, 3)
    sparse_w = torch.nn.Parameter(init.clone())
    dense_w = torch.nn.Parameter(init.clone())
    sparse_w.grad = torch.sparse_coo_tensor(grad_rows.unsqueeze(0), grad_vals, (6, 3))
    dense_w.grad = torch.zeros(6, 3).index_add_(0, grad_rows, grad_vals)
    cfg = OptimizerConfig(name="rowwise_adagrad", lr=0.1)
    RowWiseAdagrad([sparse_w], cfg).step()
    RowWiseAdagrad([dense_w], cfg).step()
    torch.testing.assert_close(sparse_w.data[[1, 4]], dense_w.data[[1, 4]])
    untouched = [0, 2, 3, 5]
    assert torch.equal(sparse_w.data[untouched], init[untouched])


def test_rowwise_adagrad_keeps_one_accumulator_per_row():
    w = torch.nn.Parameter(torch.zeros(5, 4))
    opt = RowWiseAdagrad([w], lr=0.5)
    w.grad = torch.ones(5, 4)
    opt.step()
    assert opt.state[w]["sum"].shape == (5,)
    torch.testing.assert_close(w.data, torch.full((5, 4), -0.5 / (1 + 1e-8)))


def test_combined_optimizer_steps_and_saves_both():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    combined = CombinedOptimizer({"dense": torch.optim.SGD([a], lr=1.0), "embedding": torch.optim.SGD([b], lr=2.0)})
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    combined.step()
    assert a.tolist() == [0.0, 0.0] and b.tolist() == [-1.0, -1.0]
    assert len(combined.param_groups) == 2
    state = combined.state_dict()
    assert set(state) == {"dense", "embedding"}
    combined.load_state_dict(state)
    combined.zero_grad()
    assert a.grad is None and b.grad is None


def test_the_fused_lr_part_saves_its_lr_and_steps_nothing():
    a = torch.nn.Parameter(torch.ones(2))
    fused = FusedLR(0.05)
    combined = CombinedOptimizer({"dense": torch.optim.SGD([a], lr=1.0), "embedding": fused})
    fused.param_groups[0]["lr"] = 0.01  # as a schedule sets it
    a.grad = torch.ones(2)
    combined.step()
    state = combined.state_dict()
    assert state["embedding"]["param_groups"][0]["lr"] == 0.01 and state["embedding"]["state"] == {}
    restored = FusedLR(0.05)
    CombinedOptimizer({"dense": torch.optim.SGD([a], lr=1.0), "embedding": restored}).load_state_dict(state)
    assert restored.lr() == 0.01
    older = FusedLR(0.05)  # a fused run's checkpoint from before the lr was a part: the base lr stays
    CombinedOptimizer({"dense": torch.optim.SGD([a], lr=1.0), "embedding": older}).load_state_dict({"dense": state["dense"]})
    assert older.lr() == 0.05


@pytest.mark.parametrize("rows", [[3, 7, 9, 20], [9, 3, 9, 20]])  # coalesced, and out of order with a repeat
def test_adagrad_native_sparse_step_matches_torch_adagrad(rows, monkeypatch):
    """ctr's ``adagrad`` applies CPU sparse gradients in one native pass; the weights, the
    accumulator and the step count follow torch's Adagrad (fp32 rounding apart), rows outside
    the gradient untouched."""
    from ctr.kernels import native
    from ctr.train import optim

    if native.library() is None:
        pytest.skip("no C compiler: native kernels are off")
    calls = []
    real = optim.adagrad_sparse
    monkeypatch.setattr(optim, "adagrad_sparse", lambda *args: calls.append(1) or real(*args))
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(50, 4, generator=gen)
    ours, theirs = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    opt_ours = OPTIMIZERS.get("adagrad", "x").target([ours], OptimizerConfig(name="adagrad", lr=0.1))
    opt_theirs = torch.optim.Adagrad([theirs], lr=0.1)
    for _ in range(3):
        values = torch.randn(4, 4, generator=gen)
        for param in (ours, theirs):
            param.grad = torch.sparse_coo_tensor(torch.tensor([rows]), values, (50, 4))
        opt_ours.step()
        opt_theirs.step()
    assert calls  # the native pass ran
    torch.testing.assert_close(ours.detach(), theirs.detach())
    torch.testing.assert_close(opt_ours.state[ours]["sum"], opt_theirs.state[theirs]["sum"])
    assert float(opt_ours.state[ours]["step"]) == 3
    untouched = [r for r in range(50) if r not in rows]
    assert torch.equal(ours.detach()[untouched], start[untouched])


@pytest.mark.parametrize("case", ["dense", "closure", "two_sparse_dims"])
def test_adagrad_takes_torchs_step_for_what_the_native_pass_does_not_take(case, monkeypatch):
    from ctr.train import optim

    monkeypatch.setattr(optim, "adagrad_sparse", lambda *args: pytest.fail("native pass on an unsupported gradient"))
    gen = torch.Generator().manual_seed(1)
    start = torch.randn(6, 3, generator=gen)
    ours, theirs = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    opt_ours = OPTIMIZERS.get("adagrad", "x").target([ours], OptimizerConfig(name="adagrad", lr=0.1))
    opt_theirs = torch.optim.Adagrad([theirs], lr=0.1)
    grad = torch.randn(6, 3, generator=gen)
    if case == "two_sparse_dims":
        grad = grad.to_sparse()  # sparse in both dims: not a row-sparse table gradient
    for param in (ours, theirs):
        param.grad = grad.clone()
    closure = (lambda: 0.0) if case == "closure" else None
    opt_ours.step(closure)
    opt_theirs.step(closure)
    torch.testing.assert_close(ours.detach(), theirs.detach())


@pytest.mark.parametrize("name", ["sgd", "adagrad"])
def test_weight_decay_reaches_sgd_and_adagrad(name):
    """Both ignored ``weight_decay``: a weight with a zero loss gradient never moved."""
    weight = nn.Parameter(torch.ones(3))
    optimizer = OPTIMIZERS.get(name).target([weight], OptimizerConfig(name=name, lr=0.1, weight_decay=0.5))
    weight.grad = torch.zeros(3)
    optimizer.step()
    assert torch.all(weight < 1)  # the L2 term's gradient, 0.5 · w, moved it
    if name == "sgd":
        torch.testing.assert_close(weight.detach(), torch.full((3,), 1 - 0.1 * 0.5))


@pytest.mark.parametrize("name", ["sgd", "adagrad"])
def test_weight_decay_of_a_sparse_gradient_decays_the_touched_rows_only(name):
    """A lazy L2: the rows a batch looked up take the L2 term, the others keep their values
    (torch's Adagrad refuses weight decay on sparse gradients; its SGD would decay every row)."""
    table = nn.Parameter(torch.ones(4, 2))
    optimizer = OPTIMIZERS.get(name).target([table], OptimizerConfig(name=name, lr=0.1, weight_decay=0.5))
    table.grad = torch.sparse_coo_tensor(torch.tensor([[1, 3]]), torch.zeros(2, 2), (4, 2))
    optimizer.step()
    assert torch.equal(table[[0, 2]].detach(), torch.ones(2, 2))
    assert torch.all(table[[1, 3]] < 1)
    if name == "sgd":
        torch.testing.assert_close(table[[1, 3]].detach(), torch.full((2, 2), 1 - 0.1 * 0.5))
    dense = nn.Parameter(torch.ones(4, 2))
    reference = OPTIMIZERS.get(name).target([dense], OptimizerConfig(name=name, lr=0.1, weight_decay=0.5))
    dense.grad = torch.zeros(4, 2)
    reference.step()
    torch.testing.assert_close(table[[1, 3]].detach(), dense[[1, 3]].detach())  # the same rule on the rows it decays


def test_adam_weight_decay_on_dense_table_gradients_is_fuxictrs_embedding_regularizer():
    """FuxiCTR adds (λ/2)·||W||² of every table to the loss and steps torch's Adam
    (fuxictr/pytorch/models/rank_model.py, regularization_loss); docs/training.md maps its
    embedding_regularizer λ to weight_decay λ on adam with embedding.gradients: dense. The
    two move every row alike, the rows no batch touched included."""
    gen = torch.Generator().manual_seed(3)
    start, lam = torch.randn(6, 4, generator=gen), 0.01
    ours, theirs = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    opt_ours = OPTIMIZERS.get("adam").target([ours], OptimizerConfig(name="adam", lr=0.01, weight_decay=lam))
    opt_theirs = torch.optim.Adam([theirs], lr=0.01)
    rows = torch.tensor([0, 2, 2])  # rows 1, 3, 4, 5 never looked up
    for _ in range(5):
        target = torch.randn(3, 4, generator=gen)
        for param, optimizer, penalty in ((ours, opt_ours, 0.0), (theirs, opt_theirs, lam / 2)):
            optimizer.zero_grad()
            loss = ((param[rows] - target) ** 2).mean() + penalty * param.pow(2).sum()
            loss.backward()
            optimizer.step()
    torch.testing.assert_close(ours.detach(), theirs.detach())
    assert torch.all(ours[[1, 3, 4, 5]].abs() < start[[1, 3, 4, 5]].abs())  # untouched rows decayed


@pytest.mark.parametrize("train, embedding, message", [
    ({"embedding_optimizer": {"name": "rowwise_adagrad", "weight_decay": 0.1}}, {},
     r"^train\.embedding_optimizer\.weight_decay: rowwise_adagrad applies no weight decay"),
    ({"embedding_optimizer": {"name": "rowwise_adagrad", "weight_decay": 0.1}}, {"gradients": "dense"},
     r"^train\.embedding_optimizer\.weight_decay: rowwise_adagrad applies no weight decay"),
    ({"optimizer": {"name": "rowwise_adagrad", "weight_decay": 0.1}}, {},
     r"^train\.optimizer\.weight_decay: rowwise_adagrad applies no weight decay"),
    ({"optimizer": {"name": "sparse_adam"}}, {}, r"^train\.optimizer\.name: sparse_adam steps sparse gradients only"),
])
def test_a_weight_decay_or_optimizer_that_would_be_ignored_or_crash_is_refused(train, embedding, message):
    from ctr.errors import RecipeError
    from ctr.recipe import recipe_from_dict

    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({"train": train, "embedding": {"method": "full", **embedding}})
    decayed = {"embedding_optimizer": {"name": "adagrad", "weight_decay": 0.1}, "optimizer": {"name": "sgd",
                                                                                               "weight_decay": 0.1}}
    for gradients in ("dense", "sparse"):  # applied: accepted
        recipe_from_dict({"train": decayed, "embedding": {"method": "full", "gradients": gradients}})


def test_sharded_tables_refuse_a_weight_decay_they_would_not_apply():
    from ctr.errors import RecipeError
    from ctr.recipe import EmbeddingOptimizerConfig
    from ctr.train.sharded import in_backward_optimizer

    with pytest.raises(RecipeError, match=r"^train\.embedding_optimizer\.weight_decay: sharded tables"):
        in_backward_optimizer(EmbeddingOptimizerConfig(name="adagrad", weight_decay=0.1))


def test_a_plateau_cut_of_the_sharded_tables_lr_is_saved_and_restored():
    """TorchRec's fused optimizer of sharded tables keeps its lr in its param groups, which
    its checkpoint leaves out: a resumed run put the tables back at the base lr."""
    from ctr.recipe import recipe_from_dict
    from ctr.train.distributed_optim import Optimizers

    train = recipe_from_dict({"train": {"scheduler": {"name": "plateau", "factor": 0.5}}}).train

    def placed():
        dense = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=1e-3)
        tables = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.05)  # stands for the fused optimizer
        optimizers = Optimizers([dense], named={"dense": dense})
        optimizers.follow_schedules(train, tables, train.epochs)
        return optimizers, tables

    first, tables = placed()
    for auc in (0.70, 0.69):
        first.after_validation({"auc": auc})
    assert tables.param_groups[0]["lr"] == pytest.approx(0.025)
    resumed, tables_again = placed()
    resumed.load_state_dict(first.state_dict(first.fused_lr()))
    assert tables_again.param_groups[0]["lr"] == pytest.approx(0.025)
    assert resumed.lrs() == pytest.approx(first.lrs())


DENSE_ONLY = "its parameters are dense: train.optimizer trains them"
IN_BACKWARD = "it updates its rows itself in the backward, with embedding.optimizer"


@pytest.mark.parametrize("method, train, said", [
    ({"method": "dhe", "budget": 0.5}, {"embedding_optimizer": {"lr": 0.5}}, DENSE_ONLY),
    ({"method": "dhe", "budget": 0.5}, {"embedding_scheduler": {"name": "constant"}}, DENSE_ONLY),
    ({"method": "int8"}, {"embedding_optimizer": {"name": "sgd"}}, IN_BACKWARD),
    ({"method": "dhe", "budget": 0.5}, {}, None),
    ({"method": "full"}, {"embedding_optimizer": {"lr": 0.5}}, None),
])
def test_an_embedding_optimizer_a_method_gives_nothing_to_step_is_said_unused(method, train, said, caplog):
    """DHE has no embedding rows (an MLP of dense parameters, trained by train.optimizer),
    int8 updates its own: their train.embedding_optimizer was ignored without a word."""
    from ctr.recipe import recipe_from_dict
    from ctr.train.task import CTRTask
    from tests.embeddings.schemas import schema

    recipe = recipe_from_dict({"model": {"name": "lr"}, "embedding": {"dim": 8, **method}, "train": train})
    with caplog.at_level("WARNING", logger="ctr.train.task"):
        CTRTask(recipe, schema()).configure_optimizers()
    lines = [r.getMessage() for r in caplog.records if "train.embedding_optimizer" in r.getMessage()]
    assert lines == ([f"train.embedding_optimizer: {method['method']} has no embedding rows for it to step ({said}), "
                      "so its settings are unused"] if said else [])
