"""Shared blocks behave as their papers define them."""

import math

import pytest
import torch

from ctr.models.layers import CrossNetwork, CrossNetworkV2, Dice, InteractingLayer, TargetAttention


def test_dice_uses_batch_statistics_in_training_and_moving_averages_at_inference():
    torch.manual_seed(0)
    dice = Dice(3)
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.1, 0.5, -0.2]))
    x = torch.randn(512, 3) * 2 + 1
    p = torch.sigmoid((x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-8))
    assert torch.allclose(dice(x), p * x + (1 - p) * dice.alpha * x, atol=1e-5)
    dice.eval()
    mean, var = dice.norm.running_mean, dice.norm.running_var
    p = torch.sigmoid((x - mean) / torch.sqrt(var + 1e-8))
    assert torch.allclose(dice(x), p * x + (1 - p) * dice.alpha * x, atol=1e-5)


def test_dice_on_one_training_row_is_the_formula_with_zero_variance_and_keeps_its_averages():
    """E[s] = s and Var[s] = 0 for one row: p = sigmoid(0) = 1/2 (BatchNorm raises there)."""
    dice = Dice(3)
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.1, 0.5, -0.2]))
    x = torch.tensor([[2.0, -1.0, 3.0]])
    assert torch.allclose(dice(x), 0.5 * x + 0.5 * dice.alpha * x)
    assert torch.equal(dice.norm.running_mean, torch.zeros(3)) and torch.equal(dice.norm.running_var, torch.ones(3))


def test_dice_that_no_training_batch_measured_uses_at_inference_the_half_training_used():
    """Batches of one row (E[s] = s, Var[s] = 0: p = 1/2) and of none (a batch holding no
    behaviour) move no moving average; evaluation took BatchNorm's initial mean 0 and variance
    1 for them, a function training never used. It uses training's p = 1/2 instead; one batch
    of 2 rows is enough for the moving averages to be used."""
    dice = Dice(3)
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.1, 0.5, -0.2]))
    dice(torch.tensor([[2.0, -1.0, 3.0]]))
    dice(torch.empty(0, 3))
    x = torch.tensor([[2.0, -1.0, 3.0], [-4.0, 0.5, 1.0]])
    dice.eval()
    assert torch.allclose(dice(x), 0.5 * x + 0.5 * dice.alpha * x)
    dice.train()
    dice(torch.tensor([[1.0, 1.0, 1.0], [3.0, 2.0, 0.0]]))
    dice.eval()
    p = torch.sigmoid((x - dice.norm.running_mean) / torch.sqrt(dice.norm.running_var + 1e-8))
    assert not torch.equal(dice.norm.running_mean, torch.zeros(3))
    assert torch.allclose(dice(x), p * x + (1 - p) * dice.alpha * x, atol=1e-6)


def finite_difference(values, order):
    for _ in range(order):
        values = [b - a for a, b in zip(values, values[1:])]
    return values


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("make", [CrossNetwork, CrossNetworkV2])
def test_cross_layers_build_polynomials_of_degree_layers_plus_one(make, layers):
    """With zero biases, l cross layers are a polynomial of degree l + 1 in the input scale
    (DCN §2.2, DCN-V2 §3.2): its (l+2)-th finite difference in t vanishes, its (l+1)-th does not."""
    torch.manual_seed(0)
    net = make(5, layers).double()
    for name, param in net.named_parameters():
        if "bias" in name or "biases" in name:
            torch.nn.init.zeros_(param)
    x = torch.randn(1, 5, dtype=torch.float64)
    with torch.no_grad():
        values = [net(t * x) for t in torch.arange(layers + 3, dtype=torch.float64)]
    assert finite_difference(values, layers + 2)[0].abs().max() < 1e-8
    assert finite_difference(values, layers + 1)[0].abs().max() > 1e-3


def test_dcn_cross_layer_matches_its_equation():
    torch.manual_seed(0)
    net = CrossNetwork(4, 1)
    x0 = torch.randn(3, 4)
    w, b = net.weights[0], net.biases[0]
    assert torch.allclose(net(x0), x0 * (x0 @ w).unsqueeze(1) + b + x0)


def test_dcnv2_low_rank_layer_equals_the_full_rank_layer_with_w_equal_uv():
    torch.manual_seed(0)
    low = CrossNetworkV2(6, 2, low_rank=2)
    full = CrossNetworkV2(6, 2)
    with torch.no_grad():
        for layer, linear in enumerate(full.full):
            linear.weight.copy_((low.v[layer, 0] @ low.u[layer, 0]).t())
            linear.bias.copy_(low.bias[layer])
    x0 = torch.randn(4, 6)
    assert torch.allclose(low(x0), full(x0), atol=1e-5)


def test_dcn_mix_gates_are_a_convex_combination_of_experts():
    torch.manual_seed(0)
    mix = CrossNetworkV2(6, 1, low_rank=2, experts=3)
    x0 = torch.randn(4, 6)
    with torch.no_grad():
        mix.c.zero_()  # tanh(0) = 0: every expert outputs x0 ⊙ b, so the mixture must too
        mix.bias.normal_()  # b = 0 (its initial value) would hide gates that do not sum to 1
        mix.gate.weight.normal_()
    assert torch.allclose(mix(x0), x0 * mix.bias[0] + x0, atol=1e-6)


@pytest.mark.parametrize("projection_relu", [False, True])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_interacting_layer_matches_multi_head_attention_with_residual(projection_relu, layer_norm):
    """Paper Eq. 5–8 written out head by head; with the authors' options (shichence/AutoInt
    model.py): a bias and a ReLU on every projection, layer normalisation of the output."""
    torch.manual_seed(0)
    layer = InteractingLayer(4, head_dim=3, heads=2, projection_relu=projection_relu, layer_norm=layer_norm)
    if layer_norm:
        with torch.no_grad():
            layer.norm.weight.uniform_(0.5, 1.5)
            layer.norm.bias.uniform_(-0.5, 0.5)
    e = torch.randn(2, 5, 4)
    wq, wk, wv = layer.qkv.weight.view(3, 2, 3, 4)
    bq, bk, bv = (layer.qkv.bias if projection_relu else torch.zeros(18)).view(3, 2, 3)
    act = torch.relu if projection_relu else (lambda x: x)
    heads = []
    for h in range(2):
        q, k, v = act(e @ wq[h].t() + bq[h]), act(e @ wk[h].t() + bk[h]), act(e @ wv[h].t() + bv[h])
        heads.append(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(3), -1) @ v)
    res_bias = layer.residual.bias if projection_relu else 0.0
    expected = torch.relu(torch.cat(heads, -1) + act(e @ layer.residual.weight.t() + res_bias))
    if layer_norm:
        mean, var = expected.mean(-1, keepdim=True), expected.var(-1, unbiased=False, keepdim=True)
        expected = (expected - mean) / torch.sqrt(var + 1e-8) * layer.norm.weight + layer.norm.bias
    assert torch.allclose(layer(e), expected, atol=1e-5)


def test_interacting_layer_is_equivariant_to_field_order():
    torch.manual_seed(0)
    layer = InteractingLayer(4, head_dim=3, heads=2)
    e, perm = torch.randn(2, 5, 4), torch.tensor([3, 0, 4, 1, 2])
    assert torch.allclose(layer(e)[:, perm], layer(e[:, perm]), atol=1e-6)


@pytest.mark.parametrize("fields", [1, 3])
def test_interacting_layer_exports_with_a_dynamic_batch(fields):
    """As ``ctr export`` traces it: over one field, the batched matmuls guarded that the batch
    is not 1 (AutoInt over a single feature, a libSVM run's, did not export)."""
    torch.manual_seed(0)
    layer = InteractingLayer(4, head_dim=3, heads=2).eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with torch.no_grad(), torch.fx.experimental._config.patch(backed_size_oblivious=True):
        program = torch.export.export(layer, (torch.randn(2, fields, 4),), dynamic_shapes=({0: batch},)).module()
        for rows in (1, 3):
            e = torch.randn(rows, fields, 4)
            assert torch.allclose(program(e), layer(e), atol=1e-6)
    if fields == 1:  # one field attends to itself alone (weight 1): ReLU(W_V e + W_Res e)
        e = torch.randn(3, 1, 4)
        values = e @ layer.qkv.weight[12:].t()
        assert torch.allclose(layer(e), torch.relu(values + e @ layer.residual.weight.t()), atol=1e-6)


def attention_inputs():
    torch.manual_seed(0)
    q, keys = torch.randn(3, 4), torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return q, keys * mask.unsqueeze(-1), mask


@pytest.mark.parametrize("act", ["prelu", "dice"])
@pytest.mark.parametrize("softmax", [False, True])
def test_target_attention_ignores_padded_positions(softmax, act):
    """Padding's keys change nothing, also through Dice's batch statistics (in training)."""
    q, keys, mask = attention_inputs()
    att = TargetAttention(4, [8], act=act, softmax=softmax).train()
    noisy = keys + torch.randn_like(keys) * (~mask).unsqueeze(-1)
    assert torch.allclose(att(q, keys, mask), att(q, noisy, mask), atol=1e-6)


def test_target_attention_without_softmax_keeps_the_intensity_of_interest():
    """Paper §4.3: the weights are not normalised, so a history repeating a relevant
    behaviour twice yields twice the interest (softmax would give the same vector)."""
    q, keys, mask = attention_inputs()
    once_keys, once_mask = keys[:1, :1].clone(), mask[:1, :1]
    twice_keys, twice_mask = once_keys.repeat(1, 2, 1), once_mask.repeat(1, 2)
    plain = TargetAttention(4, [8], act="prelu")
    assert torch.allclose(plain(q[:1], twice_keys, twice_mask), 2 * plain(q[:1], once_keys, once_mask), atol=1e-6)
    soft = TargetAttention(4, [8], act="prelu", softmax=True)
    soft.load_state_dict(plain.state_dict())
    assert torch.allclose(soft(q[:1], twice_keys, twice_mask), soft(q[:1], once_keys, once_mask), atol=1e-6)


@pytest.mark.parametrize(("unit_input", "expected"), [
    ("paper", [3, 5, 3, 10, 1, 2]),  # DIN Fig. 2: [k, q ⊙ k, q]
    ("authors", [1, 2, 3, 5, -2, -3, 3, 10]),  # DIEN din_attention: [q, k, q − k, q ⊙ k]
])
def test_target_attention_unit_input_matches_a_hand_computation(unit_input, expected):
    q, k = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 5.0]])
    att = TargetAttention(2, [], act="prelu", unit_input=unit_input)
    assert att.unit.net[0].in_features == len(expected)
    torch.testing.assert_close(att.features(q, k), torch.tensor([expected], dtype=torch.float32))
    with torch.no_grad():
        att.unit.net[0].weight.copy_(torch.arange(1.0, len(expected) + 1).unsqueeze(0))
        att.unit.net[0].bias.fill_(0.5)
    weight = sum(i * x for i, x in enumerate(expected, 1)) + 0.5
    single = att(q, k.unsqueeze(1), torch.ones(1, 1, dtype=torch.bool))
    torch.testing.assert_close(single, weight * k)
