"""DIN: behaviour/target pairing, history masking, mini-batch aware regularization, and
attention over behaviours beating mean pooling on data where one behaviour matters."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ctr.batch import Batch, JaggedFeatures
from ctr.errors import RecipeError, scoring_a_saved_run
from ctr.models.din import InferenceBatchNorm
from ctr.recipe import recipe_from_dict
from tests.models.helpers import behaviour_batches, behaviour_schema, fit_batches, planted_schema, task_for_schema

SMALL = {"name": "din", "hidden": [32], "attention_hidden": [16]}


@pytest.fixture(scope="module")
def schema():
    return behaviour_schema(200, 30)


def test_pairs_sequences_with_the_features_they_share_a_table_with(schema):
    model = task_for_schema(schema, SMALL).net.model
    assert model.targets == ["item_id"] and model.behaviours == ["hist_item_id"]


def test_without_behaviour_sequences_the_error_names_the_key():
    with pytest.raises(RecipeError, match="model.sequence_fields"):
        task_for_schema(planted_schema(3, 5), SMALL)
    with pytest.raises(RecipeError, match="model.target_fields: \\['nope'\\]"):
        task_for_schema(behaviour_schema(5, 4), {**SMALL, "target_fields": ["nope"], "sequence_fields": ["hist_item_id"]})
    with pytest.raises(RecipeError, match="\\['item_id'\\] not among .*; they are pooled: give them pooling: none$"):
        task_for_schema(behaviour_schema(5, 4), {**SMALL, "target_fields": ["item_id"], "sequence_fields": ["item_id"]})


def item_and_category_schema(**cat):
    """Candidate item_id and cat_id with their histories hist_item_id and hist_cat_id."""
    from ctr.schema import FeatureInfo, FeatureSpec, Schema

    item = behaviour_schema(5, 4).features
    cat_id = FeatureInfo(FeatureSpec(name="cat_id"), vocab_size=5, table="cat_id")
    hist_cat = FeatureInfo(FeatureSpec(name="hist_cat_id", kind="sequence", share_with="cat_id", pooling="none",
                                       **{"max_len": 4, **cat}), vocab_size=5, table="cat_id")
    return Schema(features=[*item, cat_id, hist_cat], label="label")


@pytest.mark.parametrize("given", [{"target_fields": ["cat_id"]}, {"sequence_fields": ["hist_cat_id"]}])
def test_the_pairing_key_left_out_follows_share_with_from_the_one_given(given):
    """Each key defaults from share_with (docs/models/din.md); giving one alone was refused."""
    model = task_for_schema(item_and_category_schema(), {**SMALL, **given}).net.model
    assert model.targets == ["cat_id"] and model.behaviours == ["hist_cat_id"]
    assert model.others == ["hist_item_id"]


@pytest.mark.parametrize("key, names", [("target_fields", ["item_id", "cat_id", "item_id"]),
                                        ("sequence_fields", ["hist_item_id", "hist_item_id"])])
def test_a_pairing_key_naming_a_feature_twice_is_refused(key, names):
    """A behaviour sequence named twice, or following share_with from a candidate field named
    twice, was attended over twice (its embeddings twice in the keys and the query), silently."""
    with pytest.raises(RecipeError, match=rf"^model\.{key}: names '{names[0]}' twice; name each feature once$"):
        task_for_schema(item_and_category_schema(), {**SMALL, key: names})


def test_a_run_saved_with_a_sequence_named_twice_is_built_for_scoring():
    """It trained (attending over the sequence twice): scoring builds the net it trained."""
    with scoring_a_saved_run():
        task = task_for_schema(item_and_category_schema(), {**SMALL, "sequence_fields": ["hist_item_id"] * 2})
    assert task.net.model.behaviours == ["hist_item_id", "hist_item_id"]


def test_two_sequences_may_pair_with_one_candidate_field():
    given = {"target_fields": ["item_id", "item_id"], "sequence_fields": ["hist_item_id", "hist_cat_id"]}
    model = task_for_schema(item_and_category_schema(), {**SMALL, **given}).net.model
    assert model.targets == ["item_id", "item_id"] and model.behaviours == ["hist_item_id", "hist_cat_id"]


def test_a_negative_l2_reg_is_refused_naming_the_value():
    with pytest.raises(RecipeError, match=r"^model\.l2_reg: must be >= 0, got -1\.0$"):
        recipe_from_dict({"model": {**SMALL, "l2_reg": -1}})


@pytest.mark.parametrize("cat, got", [({"max_len": 3}, "max_len 4, padding right; hist_cat_id: max_len 3, padding right"),
                                      ({"padding": "left"}, "max_len 4, padding right; hist_cat_id: max_len 4, padding left")])
def test_behaviour_sequences_of_another_length_or_padding_are_refused_naming_them(cat, got):
    """DIN reads its behaviour sequences position by position: a hist_cat_id of another max_len
    was a torch.cat traceback at the first batch, of another padding a model pairing one
    position's item with another position's category, silently."""
    schema = item_and_category_schema(**cat)
    with pytest.raises(RecipeError, match=r"^model\.sequence_fields: DIN reads \['hist_item_id', 'hist_cat_id'\] "
                                          r"position by position, so they need one max_len and padding \(data\."
                                          rf"features\); got hist_item_id: {got}$"):
        task_for_schema(schema, SMALL)


@pytest.mark.parametrize(("cat_lengths", "got"), [([2, 1], "of length 3 but hist_cat_id of length 2"),
                                                  ([3, 0], "of length 1 but hist_cat_id of length 0")])
def test_behaviour_sequences_of_other_lengths_in_a_row_are_refused_naming_them(cat_lengths, got):
    """An empty item (a^^b) is dropped from one history and not the other: the histories of
    a row then differ in length, and DIN paired one position's item with another position's
    category (silently, or a torch.cat traceback when the batch's longest differ too)."""
    from ctr.errors import DataError

    model = task_for_schema(item_and_category_schema(), SMALL).net
    lengths = [1, 1, 3, 1, 1, 1, *cat_lengths]  # item_id, hist_item_id [3, 1], cat_id, hist_cat_id
    sparse = JaggedFeatures.from_lengths(["item_id", "hist_item_id", "cat_id", "hist_cat_id"],
                                         torch.full((sum(lengths),), 2), torch.tensor(lengths))
    with pytest.raises(DataError, match=r"^model\.sequence_fields: DIN reads \['hist_item_id', 'hist_cat_id'\] "
                                        rf"position by position, and a row has hist_item_id {got}; "):
        model(Batch(torch.zeros(2, 0), sparse, torch.ones(2)))


@pytest.mark.parametrize("variant", ["paper", "authors", "ctr"])
def test_history_beyond_its_length_does_not_change_the_prediction(schema, variant):
    """Padding is left out of the attention and of the variants' history sums."""
    task = task_for_schema(schema, {**SMALL, "variant": variant})
    task.eval()
    batch = behaviour_batches(schema, 8, 8, seed=3)[0]
    embedded = task.net.embedding(batch.sparse)
    mask = embedded.masks["hist_item_id"]
    assert not mask.all()  # some histories are shorter than the longest
    noisy = embedded.sequences["hist_item_id"] + torch.randn_like(embedded.sequences["hist_item_id"]) * (~mask).unsqueeze(-1)
    other = type(embedded)(embedded.pooled, {"hist_item_id": noisy}, embedded.masks, embedded.rows)
    assert torch.allclose(task.net.model(batch, embedded), task.net.model(batch, other), atol=1e-6)


def test_mini_batch_aware_l2_covers_each_present_row_once_scaled_by_its_frequency(schema):
    lam = 0.5
    task = task_for_schema(schema, {**SMALL, "l2_reg": lam})
    batch = behaviour_batches(schema, 16, 16, seed=4)[0]
    embedded = task.net.embedding(batch.sparse)
    reg = task.net.model.regularizer(batch, embedded)
    rows = torch.unique(batch.sparse.values)  # one table: ids are its rows; no padding here
    counts = torch.as_tensor(schema.counts["item_id"], dtype=torch.float32)
    weight = task.net.embedding.weight
    expected = 0.5 * lam * (weight[rows].pow(2).sum(1) / counts[rows]).sum()
    assert torch.allclose(reg, expected)
    task.zero_grad()
    reg.backward()
    grad = weight.grad.coalesce()
    touched = grad.indices()[0]
    assert grad.is_sparse and set(touched.tolist()) == set(rows.tolist())
    dense = grad.to_dense()
    assert torch.allclose(dense[rows], lam * weight[rows] / counts[rows].unsqueeze(1), atol=1e-7)


def averaged_regularizer_gradient(rank: int, store: str, out: str) -> None:
    """Rank ``rank`` of 2: the regularizer's gradient of its own batch, averaged over the
    ranks as data-parallel training averages them (rank 0 saves it)."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    schema = behaviour_schema(200, 30)
    task = task_for_schema(schema, {**SMALL, "l2_reg": 0.5})
    part = behaviour_batches(schema, 16, 16, seed=4 + rank)[0]
    task.net.model.regularizer(part, task.net.embedding(part.sparse)).backward()
    grad = task.net.embedding.weight.grad.to_dense()
    dist.all_reduce(grad)
    if rank == 0:
        torch.save(grad / 2, f"{out}/averaged.pt")
    dist.destroy_process_group()


def test_data_parallel_l2_steps_each_row_of_the_whole_batch_once(schema, tmp_path):
    """Two ranks' shares of a batch holding a row each used to give it half of λ·w_j/n_j."""
    mp.spawn(averaged_regularizer_gradient, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    averaged = torch.load(tmp_path / "averaged.pt")
    task = task_for_schema(schema, {**SMALL, "l2_reg": 0.5})
    parts = [behaviour_batches(schema, 16, 16, seed=4 + rank)[0] for rank in range(2)]
    rows = torch.unique(torch.cat([part.sparse.values for part in parts]))
    assert len(rows) < sum(len(torch.unique(part.sparse.values)) for part in parts)  # some rows on both ranks
    weight, counts = task.net.embedding.weight, torch.as_tensor(schema.counts["item_id"], dtype=torch.float32)
    expected = torch.zeros_like(weight)
    expected[rows] = 0.5 * weight[rows].detach() / counts[rows].unsqueeze(1)
    torch.testing.assert_close(averaged, expected)


def test_regularizer_is_off_at_evaluation_and_by_default(schema):
    batch = behaviour_batches(schema, 16, 16, seed=4)[0]
    task = task_for_schema(schema, {**SMALL, "l2_reg": 0.5})
    task.eval()
    assert task.net(batch)[1].item() == 0.0
    assert task_for_schema(schema, SMALL).net(batch)[1].item() == 0.0


def test_attention_finds_the_relevant_behaviour_that_mean_pooling_dilutes():
    """Label depends on whether the candidate is among up to 20 behaviours: DIN's local
    activation unit weighs the matching behaviour; DeepFM over the mean-pooled history
    (DIN's baseline in its paper) sees it diluted."""
    schema = behaviour_schema(100, 20)
    train, test = behaviour_batches(schema, 20000, 256, seed=1), behaviour_batches(schema, 4000, 1000, seed=2)
    din = fit_batches(task_for_schema(schema, SMALL), train, test, 3)
    deepfm = fit_batches(task_for_schema(schema, {"name": "deepfm", "hidden": [32], "dropout": 0.0}), train, test, 3)
    assert din > deepfm + 0.05, (din, deepfm)


def hand_batch(variant: str, **config):
    """One sample: candidate id 2, history ids [3, 4]; D = 2 with e(2) = [1, 2], e(3) = [3, -1],
    e(4) = [0, 1]; an activation unit without hidden layers whose score is ⟨q, k⟩ (its weight
    reads only the q ⊙ k block of the unit input) and bias 0."""
    schema = behaviour_schema(5, 3)
    task = task_for_schema(schema, {"name": "din", "variant": variant, "attention_hidden": [], "hidden": [4], **config},
                           embedding={"dim": 2})
    model = task.net.model
    with torch.no_grad():
        task.net.embedding.weight[2:5] = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 1.0]])
        unit = model.attention.unit.net[0]
        product_block = {"paper": [2, 3], "authors": [6, 7]}[model.config.unit_input]
        unit.weight.zero_()
        unit.weight[0, product_block] = 1.0
        unit.bias.zero_()
    sparse = JaggedFeatures.from_lengths(["item_id", "hist_item_id"], torch.tensor([2, 3, 4]), torch.tensor([1, 2]))
    batch = Batch(torch.zeros(1, 0), sparse, torch.ones(1))
    return model, batch, task.net.embedding(batch.sparse)


# scores ⟨q, k_1⟩ = 1·3 + 2·(−1) = 1 and ⟨q, k_2⟩ = 2: softmax weights e/(e + e²), e²/(e + e²)
SOFT = [math.e / (math.e + math.e**2), math.e**2 / (math.e + math.e**2)]
SOFT_INTEREST = [SOFT[0] * 3, SOFT[0] * -1 + SOFT[1] * 1]


@pytest.mark.parametrize(("variant", "expected"), [
    # [q, interest = 1·k_1 + 2·k_2 = [3, 1]]
    ("paper", [1, 2, 3, 1]),
    # [q, Σk = [3, 0], q ⊙ Σk = [3, 0], softmax interest]
    ("authors", [1, 2, 3, 0, 3, 0, *SOFT_INTEREST]),
    # [q, softmax interest, q ⊙ interest]
    ("ctr", [1, 2, *SOFT_INTEREST, SOFT_INTEREST[0], 2 * SOFT_INTEREST[1]]),
])
def test_top_mlp_input_of_each_variant_matches_a_hand_computation(variant, expected):
    model, batch, embedded = hand_batch(variant)
    assert model.mlp.net[0].in_features == len(expected)
    torch.testing.assert_close(model.mlp_input(batch, embedded), torch.tensor([expected], dtype=torch.float32))


def test_variant_defaults_and_overrides_of_the_attention():
    paper, _, _ = hand_batch("paper")
    assert paper.attention.unit_input == "paper" and not paper.attention.softmax
    assert isinstance(paper.input_norm, torch.nn.Identity)
    authors, _, _ = hand_batch("authors")
    assert authors.attention.unit_input == "authors" and authors.attention.softmax
    assert isinstance(authors.input_norm, InferenceBatchNorm)
    assert isinstance(hand_batch("authors", input_norm="batch")[0].input_norm, torch.nn.BatchNorm1d)
    assert isinstance(hand_batch("ctr", input_norm="inference")[0].input_norm, InferenceBatchNorm)
    ctr_own, _, _ = hand_batch("ctr")
    assert ctr_own.attention.unit_input == "authors" and ctr_own.attention.softmax
    model, batch, embedded = hand_batch("paper", softmax=True, attention_input="authors", attention_scale=True)
    scaled = [math.exp(1 / math.sqrt(2)), math.exp(2 / math.sqrt(2))]
    weights = [w / sum(scaled) for w in scaled]
    interest = [weights[0] * 3, -weights[0] + weights[1]]
    torch.testing.assert_close(model.mlp_input(batch, embedded), torch.tensor([[1.0, 2.0, *interest]]))


def test_attention_scale_divides_the_scores_without_a_softmax_too():
    """The paper's unnormalised weights ⟨q, k⟩ / √E: interest [3, 1] / √2."""
    model, batch, embedded = hand_batch("paper", attention_scale=True)
    assert not model.attention.softmax
    torch.testing.assert_close(model.mlp_input(batch, embedded),
                               torch.tensor([[1.0, 2.0, 3 / math.sqrt(2), 1 / math.sqrt(2)]]))


def test_the_authors_normalisation_is_tfs_batch_norm_in_inference_mode():
    """DIEN's build_fcn_net runs tf.layers.batch_normalization without training: moving
    statistics 0 and 1, never updated, so a learned scale and shift, the same in training
    and in eval, that reads no batch statistics (one row's output does not depend on the
    rest of its batch)."""
    norm = InferenceBatchNorm(3)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, -1.0]))
        norm.bias.copy_(torch.tensor([0.0, 0.5, 1.0]))
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, -4.0, 0.0]])
    expected = x * torch.tensor([1.0, 2.0, -1.0]) / math.sqrt(1.001) + torch.tensor([0.0, 0.5, 1.0])
    for training in (True, False):
        norm.train(training)
        torch.testing.assert_close(norm(x), expected)
        torch.testing.assert_close(norm(x[:1]), expected[:1])
    assert {name for name, _ in norm.named_buffers()} == set()  # no statistics to keep


def test_mini_batch_aware_l2_refuses_a_fused_table_update():
    """The regularizer's second lookup took an Adagrad step of its own under a fused update:
    a λ of 1e-5 shrank the tables as much as 1e-4."""
    fused = {"embedding_optimizer": {"name": "adagrad", "fused": True}}
    with pytest.raises(RecipeError, match=r"^model\.l2_reg: the regularizer looks the batch's rows up again"):
        recipe_from_dict({"model": {"name": "din", "l2_reg": 1e-5}, "train": fused})
    assert recipe_from_dict({"model": {"name": "din", "l2_reg": 0.0}, "train": fused})
    with pytest.raises(RecipeError, match=r"^model\.l2_reg: .* and int8 would step that lookup on its own"):
        recipe_from_dict({"model": {"name": "din", "l2_reg": 1e-5}, "embedding": {"method": "int8"}})
