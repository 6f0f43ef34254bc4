import pytest
import torch

from ctr.embeddings.deeplight import DeepLightConfig, DeepLightEmbedding, scheduled_sparsity
from ctr.embeddings.sparse import SparseRows, format_bytes, kept_for_budget
from ctr.embeddings.stages import Stage
from tests.embeddings.schemas import batch, schema


def test_the_schedule_by_hand():
    config = DeepLightConfig(budget=0.5, warmup_steps=20)
    assert scheduled_sparsity(20, 0.8, config) == 0
    assert scheduled_sparsity(120, 0.8, config) == pytest.approx(0.8 * (1 - 0.99))
    assert scheduled_sparsity(10**6, 0.8, config) == pytest.approx(0.8)


def test_sparsity_follows_the_schedule_after_a_dense_warm_up():
    torch.manual_seed(0)
    method = DeepLightEmbedding(schema(), DeepLightConfig(dim=8, budget=0.3, warmup_steps=30, decay=0.5))
    method.train()
    for step in range(1, 301):
        before = method.weight.detach().abs().clone()
        method(batch(seed=step))  # each training forward is a step of the schedule
        if step == 30:
            assert method.sparsity() == 0  # warm-up: dense
        if step % 10 == 0 and step > 30:
            expected = int(scheduled_sparsity(step, method.target, method.config) * method.weight.numel())
            kept = method.weight != 0
            assert int((~kept).sum()) == expected
            assert before[kept].min() >= before[~kept].max()  # the smallest magnitudes are pruned
    assert method.sparsity() == pytest.approx(method.target * (1 - 0.5**2.7), abs=1e-4)  # on its way to S


def test_finetune_stores_exactly_the_budgets_entries_and_keeps_the_mask():
    torch.manual_seed(0)
    method = DeepLightEmbedding(schema(), DeepLightConfig(dim=8, budget=0.3))
    largest = method.weight.detach().abs().flatten().topk(method.kept).values.min()
    method.begin_stage(Stage("finetune"))
    assert method.memory_bytes() <= 0.3 * method.full_bytes() and method.sparse.values.numel() == method.kept
    assert method.sparse.values.abs().min() >= largest  # the largest magnitudes are kept
    method.train()
    ids = torch.arange(2, 200)
    before = method.embed_ids(torch.zeros_like(ids), ids).detach()
    method.embed_ids(torch.zeros_like(ids), ids).sum().backward()
    with torch.no_grad():
        method.sparse.values.add_(method.sparse.values.grad.to_dense())
    after = method.embed_ids(torch.zeros_like(ids), ids).detach()
    assert torch.equal(after == 0, before == 0) and not torch.equal(after, before)


@pytest.mark.parametrize("dim, density, expected", [(16, 0.5, "bitmap"), (64, 0.03, "csr")])
def test_the_stored_format_is_the_smaller_and_loads_to_the_same_rows(dim, density, expected):
    torch.manual_seed(0)
    dense, mask = torch.randn(50, dim), torch.rand(50, dim) < density
    stored = SparseRows(dense, mask)
    assert stored.format == expected
    nnz = int(mask.sum())
    assert stored.memory_bytes() == min(nnz * 4 + 50 * dim // 8, nnz * 5 + 51 * 4)
    loaded = SparseRows(torch.zeros(50, dim), mask)
    loaded.load_state_dict(stored.state_dict())
    rows = torch.tensor([0, 7, 7, 49])
    torch.testing.assert_close(loaded(rows), (dense * mask)[rows])


def test_csr_columns_past_256_read_their_own_entries():
    """Columns were stored as uint8 at any D: at D = 512 an entry of column 300 was read
    back at column 44 (300 mod 256), and the budget counted one byte a column."""
    torch.manual_seed(0)
    dense, mask = torch.randn(50, 512), torch.rand(50, 512) < 0.03
    stored = SparseRows(dense, mask)
    assert stored.format == "csr"
    torch.testing.assert_close(stored(torch.arange(50)), dense * mask)
    assert stored.memory_bytes() == sum(t.numel() * t.element_size() for t in stored.state_dict().values())


def test_kept_entries_fill_the_budget():
    kept = kept_for_budget(1000, 16, 20000.0)
    assert format_bytes(1000, 16, kept)[1] <= 20000 < format_bytes(1000, 16, kept + 1)[1]
    assert kept_for_budget(1000, 16, 1000.0) is None


def test_prunings_count_their_interval_from_the_end_of_the_warm_up():
    """The artifact's ``make_adaptive_rate`` (methods/layers/deeplight.py) prunes when the
    steps since the warm-up are a multiple of 10; counting from step 1 pruned at step 30
    after a warm-up of 25 steps, 5 steps in."""
    torch.manual_seed(0)
    method = DeepLightEmbedding(schema(), DeepLightConfig(dim=8, budget=0.3, warmup_steps=25, decay=0.5))
    method.train()
    pruned_at = []
    for step in range(1, 56):
        method(batch(seed=step))
        if method.sparsity() > 0 and not pruned_at:
            pruned_at.append(step)
    assert pruned_at == [35]
