import torch

from ctr.embeddings.pep import PEPConfig, PEPEmbedding, pruning_threshold, soft_threshold
from ctr.embeddings.stages import Stage, StageContext
from tests.embeddings.schemas import batch, schema


def test_soft_threshold_by_hand():
    w = torch.tensor([0.9, -0.7, 0.2])
    s = torch.tensor([0.0, 0.0, 0.0])  # g = sigmoid(0) = 0.5
    torch.testing.assert_close(soft_threshold(w, s, 1.0), torch.tensor([0.4, -0.2, 0.0]))



def test_gk_scales_the_threshold_as_in_the_authors_code():
    """The authors' PEP (ssui-liu/learnable-embed-sizes-for-RecSys, models/pep_embedding.py,
    ``soft_threshold``) subtracts g(s)·gk; gk was read as a slope, sigmoid(gk·s)."""
    w = torch.tensor([1.5, -1.2, 0.9])
    s = torch.zeros(3)  # g = sigmoid(0) = 0.5, times gk = 2: threshold 1
    torch.testing.assert_close(soft_threshold(w, s, 2.0), torch.tensor([0.5, -0.2, 0.0]))
    method = PEPEmbedding(schema(), PEPConfig(dim=8, budget=0.3, threshold_init=0.0, gk=2.0))
    with torch.no_grad():
        method.weight.fill_(0.9)
    assert not method.alive().any()

def test_thresholds_move_and_the_mask_is_taken_when_the_target_is_reached():
    torch.manual_seed(0)
    method = PEPEmbedding(schema(), PEPConfig(dim=8, budget=0.3, threshold_init=-3.0, check_every=1, init_std=0.1))
    method.train()
    optimizer = torch.optim.SGD([method.weight, method.threshold], lr=1.0)
    before = method.threshold.detach().clone()
    features = torch.cat([torch.full((n,), f) for f, n in ((0, 1000), (1, 600), (3, 40))])
    ids = torch.cat([torch.arange(n) for n in (1000, 600, 40)])
    for _ in range(200):
        method.advance()  # what each training forward does first
        optimizer.zero_grad()
        method.embed_ids(features, ids).abs().sum().backward()  # rewards small entries: thresholds rise
        optimizer.step()
        if int(method.reached_at):
            break
    moved = method.threshold.detach() != before
    assert moved.any() and (method.threshold.detach()[moved] > before[moved]).all()
    assert int(method.reached_at) > 0 and int(method.keep.sum()) <= method.kept


def test_the_artifacts_init_gives_thresholds_no_gradient_in_fp32():
    method = PEPEmbedding(schema(), PEPConfig(dim=8, budget=0.3))
    method.train()
    method(batch()).pooled.sum().backward()
    assert method.threshold.grad.coalesce().values().abs().max() == 0  # sigmoid'(-150) underflows


def test_retraining_rewinds_into_a_fixed_mask_within_the_budget():
    torch.manual_seed(0)
    method = PEPEmbedding(schema(), PEPConfig(dim=8, budget=0.3))
    initial = method.weight.detach().clone()
    with torch.no_grad():
        method.weight.normal_()  # search moved the weights
        margin = method.weight.abs() - pruning_threshold(method.threshold, method.config.gk)
    method.run_procedure(Stage("mask", kind="procedure"), StageContext(score=lambda: 0.5, seed=0))
    keep = method.keep.clone()
    assert int(keep.sum()) == method.kept  # never reached: cut to the budget
    assert margin[keep].min() >= margin[~keep].max()  # the largest |w| - g(s) are kept
    assert method.stage_summary(Stage("mask", kind="procedure"))["reached_at_step"] is None
    with torch.no_grad():
        method.weight.copy_(initial)  # what the trainer's rewind does before the stage
    method.begin_stage(Stage("retrain", rewind=True))
    assert method.memory_bytes() <= 0.3 * method.full_bytes()
    rows = torch.arange(1640)
    torch.testing.assert_close(method.sparse(rows), initial * keep)  # the ticket starts at its initial values
    method.sparse(rows).sum().backward()
    with torch.no_grad():
        method.sparse.values.add_(method.sparse.values.grad.to_dense())
    assert torch.equal(method.sparse(rows) != 0, keep)


def test_thresholds_that_prune_every_entry_at_a_check_are_one_line():
    """Thresholds started so high that g(s) passes every |w| before the first check: the mask
    would keep nothing and the retrain would have no table (it failed in index_select)."""
    import pytest

    from ctr.errors import RecipeError

    method = PEPEmbedding(schema(), PEPConfig(dim=8, budget=0.3, threshold_init=-3.0, check_every=5, init_std=0.01))
    method.train()
    for _ in range(4):
        method.advance()
    with pytest.raises(RecipeError, match=r"^embedding.threshold_init: pep's thresholds pruned every entry by step 5 "):
        method.advance()


def test_a_search_that_ends_before_its_first_check_with_every_entry_pruned_is_one_line():
    """A search shorter than ``check_every`` steps never checked: the mask stage kept nothing
    and the retrain failed in index_select."""
    import pytest

    from ctr.errors import RecipeError

    method = PEPEmbedding(schema(), PEPConfig(dim=8, budget=0.3, threshold_init=-3.0, check_every=100, init_std=0.01))
    method.train()
    method.advance()
    with pytest.raises(RecipeError, match=r"^embedding.threshold_init: pep's thresholds pruned every entry by the end "
                                          r"of the search \(step 1\) \(g\(s\) passed every \|w\|\): nothing is left to "
                                          r"retrain; start them lower \(the artifact's -150\) or search at least "
                                          r"embedding\.check_every steps$"):
        method.run_procedure(Stage("mask", kind="procedure"), StageContext(score=lambda: 0.5, seed=0))
