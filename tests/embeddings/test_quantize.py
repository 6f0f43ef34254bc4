import math

import pytest
import torch

from ctr.embeddings.alpt import ALPTConfig, ALPTEmbedding, lsq_step_gradient
from ctr.embeddings.budget import BudgetUnreachableError
from ctr.embeddings.quantize import Int16Config, QuantizeConfig, QuantizedEmbedding, stochastic_round
from ctr.errors import RecipeError
from ctr.recipe import recipe_from_dict
from ctr.typed import to_plain
from tests.embeddings.schemas import batch, schema


@pytest.mark.parametrize("config, dtype, ratio", [(QuantizeConfig, torch.int8, 0.25), (Int16Config, torch.int16, 0.5)])
def test_tables_are_stored_as_integers_at_a_fixed_ratio(config, dtype, ratio):
    method = QuantizedEmbedding(schema(), config(dim=8))
    stored = method.state_dict()
    assert list(stored) == ["codes", "square_sums"] and stored["codes"].dtype == dtype  # + the optimizer's state
    assert method.memory_bytes() == ratio * method.full_bytes()
    assert list(QuantizedEmbedding(schema(), config(dim=8, optimizer="sgd")).state_dict()) == ["codes"]
    with pytest.raises(BudgetUnreachableError, match=f"smallest budget it reaches is {ratio:g}"):
        QuantizedEmbedding(schema(), config(dim=8, budget=ratio * 0.99))
    QuantizedEmbedding(schema(), config(dim=8, budget=ratio))  # the minimum it names is reached


def test_stochastic_rounding_is_unbiased_in_expectation():
    x = torch.full((200000,), 3.3)
    rounded = stochastic_round(x, torch.Generator().manual_seed(0))
    assert set(rounded.unique().tolist()) == {3.0, 4.0}
    assert abs(rounded.mean().item() - 3.3) < 0.01


def test_updates_smaller_than_the_step_move_rows_in_expectation():
    torch.manual_seed(0)
    method = QuantizedEmbedding(schema({"item": 20000, "user": 10, "tags": 10}), QuantizeConfig(dim=8, optimizer="sgd", lr=1.0))
    rows = torch.arange(20000)
    method.codes[rows] = 5  # every value 0.05
    method.apply_update(rows, torch.full((20000, 8), 0.003))  # 0.3 of a step, down
    values = method.codes[rows].float() * 0.01
    assert set(method.codes[rows].unique().tolist()) == {4, 5}
    assert abs(values.mean().item() - 0.047) < 2e-4  # nearest rounding would leave 0.05


def test_rowwise_adagrad_steps_by_lr_whatever_the_gradient_scale():
    """Adagrad's first step is lr·g/|g|: a gradient of 0.003 or of 3 moves rows by lr (here
    0.3 of the quantization step) in expectation; its state is one mean squared gradient a row."""
    torch.manual_seed(0)
    for gradient in (0.003, 3.0):
        method = QuantizedEmbedding(schema({"item": 20000, "user": 10, "tags": 10}), QuantizeConfig(dim=8, lr=0.003))
        rows = torch.arange(20000)
        method.codes[rows] = 5
        method.apply_update(rows, torch.full((20000, 8), gradient))
        values = method.codes[rows].float() * 0.01
        assert abs(values.mean().item() - 0.047) < 2e-4
        torch.testing.assert_close(method.square_sums[rows], torch.full((20000,), gradient**2))
        assert not method.square_sums[20000:].any()


def test_a_training_lookup_updates_the_codes_of_the_rows_it_read_only():
    torch.manual_seed(0)
    method = QuantizedEmbedding(schema(), QuantizeConfig(dim=8, lr=10.0))
    method.train()
    before = method.codes.clone()
    ids = torch.tensor([5, 9, 9, 30])
    out = method.embed_ids(torch.ones_like(ids), ids)  # feature user: rows 1000 + id
    assert out.requires_grad and not method.codes.requires_grad
    out.sum().backward()
    changed = (method.codes != before).any(1).nonzero().squeeze(1)
    assert set(changed.tolist()) == {1005, 1009, 1030}
    method.eval()
    assert not method.embed_ids(torch.ones_like(ids), ids).requires_grad


def test_lsq_gradient_of_the_step_by_hand():
    v = torch.tensor([[0.4, -2.6, 200.0]])  # 200 is clamped to the int8 bound 127
    grad = torch.tensor([[1.0, 2.0, 0.5]])
    expected = 1.0 * (0.0 - 0.4) + 2.0 * (-3.0 + 2.6) + 0.5 * 127
    torch.testing.assert_close(lsq_step_gradient(v, grad, 8), torch.tensor([[expected]]))


def test_alpt_steps_receive_gradients_on_the_rows_read():
    torch.manual_seed(0)
    method = ALPTEmbedding(schema(), ALPTConfig(dim=8, scale_lr=1e-2))
    method.train()
    ids = torch.arange(2, 40)
    out = method.embed_ids(torch.zeros_like(ids), ids)
    (out * torch.randn_like(out)).sum().backward()
    moved = method.steps.squeeze(1) != 0.01
    assert moved[ids].all() and not moved[40:].any()
    assert method.memory_bytes() == method.codes.numel() + 4 * method.steps.numel()
    stored = {name: t.dtype for name, t in method.state_dict().items()}
    assert stored == {"codes": torch.int8, "steps": torch.float32, "square_sums": torch.float32}


@pytest.mark.parametrize("method, bits", [("int8", 8), ("int16", 16)])
def test_the_methods_name_fixes_its_bits_and_no_recipe_key_changes_them(method, bits):
    """``int8`` took ``digit: 16`` and trained a 16-bit table under its name."""
    assert recipe_from_dict({"embedding": {"method": method}}).embedding.digit == bits
    with pytest.raises(RecipeError, match=r"^embedding\.digit: unknown key"):
        recipe_from_dict({"embedding": {"method": method, "digit": 24 - bits}})
    saved = to_plain(recipe_from_dict({"embedding": {"method": method}}))
    assert "digit" not in saved["embedding"] and recipe_from_dict(saved).embedding.digit == bits  # recipe.yaml reloads


def test_alpt_takes_8_or_16_bits_only():
    """The bits check moved off the shared config; alpt kept the key and lost the check (a
    KeyError traceback at the first lookup)."""
    assert recipe_from_dict({"embedding": {"method": "alpt", "digit": 16}}).embedding.digit == 16
    with pytest.raises(RecipeError, match=r"^embedding\.digit: 4 must be 8 or 16$"):
        recipe_from_dict({"embedding": {"method": "alpt", "digit": 4}})


def test_alpt_scales_the_steps_gradient_by_lsq_g_of_the_batch():
    """The artifact's ``scheduler/alpt.py`` multiplies the steps' gradient by
    1/√(B·D·Q_p) before its step at scale_lr; without it the steps moved ~2,000× as far."""
    torch.manual_seed(0)
    method = ALPTEmbedding(schema(), ALPTConfig(dim=8, scale_lr=1e-2, optimizer="sgd", lr=1e-3))
    method.train()
    sparse = batch(size=32)
    rows = method.row_start[method.feature_table[torch.zeros(1, dtype=torch.long)]] + sparse.values[:32]
    before = method.steps.clone()
    values = method.config.middle + method.codes.float() * method.steps
    pooled = method(sparse).pooled
    weights = torch.randn_like(pooled)
    (pooled * weights).sum().backward()
    item_rows, inverse = torch.unique(rows, return_inverse=True)
    grad = torch.zeros(item_rows.numel(), 8).index_add_(0, inverse, weights[:, 0])
    v = (values[item_rows] - 1e-3 * grad - method.config.middle) / before[item_rows]  # after the rows' SGD step
    expected = before[item_rows] - 1e-2 / math.sqrt(32 * 8 * 127) * lsq_step_gradient(v, grad, 8)
    torch.testing.assert_close(method.steps[item_rows], expected)
    assert method.batch_rows == 32
