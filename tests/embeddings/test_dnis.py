import numpy as np
import pytest
import torch

from ctr.embeddings.dnis import DNIS, DNISConfig, frequency_blocks
from ctr.embeddings.stages import Stage, StageContext
from ctr.errors import RecipeError
from tests.embeddings.schemas import batch, schema

PRUNE, RETRAIN = Stage("prune", kind="procedure"), Stage("retrain")


def test_frequency_blocks_hold_equal_shares_of_the_occurrences():
    counts = (1e6 / np.arange(1, 5001) ** 1.2).astype(np.int64)
    counts[-100:] = 0
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(counts)
    block = frequency_blocks(shuffled, 5)
    shares = np.bincount(block, weights=shuffled, minlength=5) / shuffled.sum()
    np.testing.assert_allclose(shares[:4], 0.2, atol=0.02)
    sizes = np.bincount(block, minlength=5)
    assert (np.diff(sizes) > 0).all()  # frequent ids form small blocks, rare ids large ones
    assert (block[shuffled == 0] == 4).all()
    order = np.argsort(-shuffled, kind="stable")
    assert (np.diff(block[order]) >= 0).all()


def test_search_scales_each_id_by_its_blocks_selection_vector():
    method = DNIS(schema(), DNISConfig(dim=8, budget=0.2, blocks=4))
    with torch.no_grad():
        method.alpha.uniform_(0, 1)
    jf = batch()
    out = method(jf)
    item = jf.bag("item", 2)
    row = method.row_start[0] + item
    torch.testing.assert_close(out.pooled[2, 0], (method.weight[row] * method.alpha[method.block_of_row[row]])[0])
    assert method.arch_parameters() == [method.alpha] and method.sparse_parameters() == [method.weight]


def test_arch_update_normalises_the_gradient_per_block_and_clips_to_unit_interval():
    method = DNIS(schema(), DNISConfig(dim=8, budget=0.2, blocks=4, alpha_l1=0.0))
    with torch.no_grad():
        method.alpha.fill_(0.5)
    optimizer = torch.optim.SGD([method.alpha], lr=0.01)
    out = method(batch(size=64))
    loss = (out.pooled**2).sum() + (out.sequences["hist"] ** 2).sum()
    method.arch_update(loss, optimizer)
    step = (method.alpha.detach() - 0.5).abs()
    seen = step.sum(1) > 0
    assert seen.sum() >= 2
    torch.testing.assert_close(step[seen].mean(1), torch.full((int(seen.sum()),), 0.01))  # |Δα_k| averages lr
    with torch.no_grad():
        method.alpha.fill_(0.999)
    optimizer = torch.optim.SGD([method.alpha], lr=1.0)
    method.arch_update(-method(batch(size=64)).pooled.abs().sum(), optimizer)
    assert method.alpha.max() <= 1.0 and method.alpha.min() >= 0.0


@pytest.mark.parametrize("budget", [0.5, 0.2, 0.05])
def test_pruning_hits_the_target_parameter_count_and_retraining_stores_only_it(budget):
    torch.manual_seed(0)
    method = DNIS(schema(), DNISConfig(dim=8, budget=budget, blocks=4))
    rows = method.weight.shape[0]
    target = (budget * method.full_bytes() - rows * 1) // 4  # D = 8: one mask byte per row
    assert method.target_params == int(target)
    with torch.no_grad():
        method.alpha.uniform_(0.2, 1)
        merged = (method.weight * method.alpha[method.block_of_row]).abs()
    method.begin_stage(PRUNE)
    method.run_procedure(PRUNE, StageContext(score=lambda: 0.5, seed=0))
    kept = method.weight != 0
    # independently: the `target` largest |E ⊙ α| entries, ranked by numpy (magnitudes distinct)
    ranked = np.argsort(-merged.numpy().ravel(), kind="stable")
    expected = np.zeros(merged.numel(), dtype=bool)
    expected[ranked[: int(target)]] = True
    assert int(kept.sum()) == int(target)
    np.testing.assert_array_equal(kept.numpy().ravel(), expected)
    assert merged[kept].min() >= method.prune_threshold >= merged[~kept].max()
    method.eval()
    jf = batch(size=32)
    pruned = method(jf)
    method.begin_stage(RETRAIN)
    assert method.sparse.values.shape == (int(kept.sum()), 1) and method.sparse.format == "bitmap"
    assert method.memory_bytes() == 4 * int(kept.sum()) + rows <= budget * method.full_bytes()
    assert set(method.state_dict()) == {"sparse.bits", "sparse.values"}
    retrained = method(jf)
    torch.testing.assert_close(retrained.pooled, pruned.pooled)
    torch.testing.assert_close(retrained.sequences["hist"], pruned.sequences["hist"])
    retrained.pooled.sum().backward()
    assert method.sparse.values.grad.is_sparse


def test_dnis_needs_a_budget():
    with pytest.raises(RecipeError, match=r"^embedding\.budget: dnis sizes"):
        DNIS(schema(), DNISConfig(dim=8))
