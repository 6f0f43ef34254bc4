"""DLRM's interaction layer on a hand-built batch: x from the bottom MLP, then every pairwise
dot product of [x, e_1, e_2] (Naumov et al. 2019, §2.2, "dot" interaction)."""

import pytest
import torch

from ctr.batch import Batch, JaggedFeatures
from tests.models.helpers import planted_schema, task_for_schema


def hand_built(interaction_self: bool):
    """Dense [0.5, 2] through a bottom layer set to the identity (ReLU keeps it): x = [0.5, 2];
    e_1 = [1, 2], e_2 = [3, -1]."""
    task = task_for_schema(planted_schema(2, 5, dense=2), {"name": "dlrm", "bottom_mlp": [], "top_mlp": [4],
                                                           "interaction_self": interaction_self},
                           embedding={"dim": 2})
    model = task.net.model
    with torch.no_grad():
        model.bottom.net[0].weight.copy_(torch.eye(2))
        model.bottom.net[0].bias.zero_()
    batch = Batch(torch.tensor([[0.5, 2.0]]), JaggedFeatures.from_dense(["c0", "c1"], torch.tensor([[2, 3]])), torch.ones(1))
    embedded = task.net.embedding(batch.sparse)
    pooled = torch.tensor([[[1.0, 2.0], [3.0, -1.0]]])
    return model, batch, type(embedded)(pooled, {}, {}, None)


@pytest.mark.parametrize(("interaction_self", "expected"), [
    # x; then x·e_1 = 0.5 + 4, x·e_2 = 1.5 − 2, e_1·e_2 = 3 − 2
    (False, [0.5, 2.0, 4.5, -0.5, 1.0]),
    # x; x·x = 4.25, x·e_1, x·e_2, e_1·e_1 = 5, e_1·e_2, e_2·e_2 = 10
    (True, [0.5, 2.0, 4.25, 4.5, -0.5, 5.0, 1.0, 10.0]),
])
def test_interaction_of_a_hand_built_batch(interaction_self, expected):
    model, batch, embedded = hand_built(interaction_self)
    assert model.top.net[0].in_features == len(expected)
    torch.testing.assert_close(model.interaction(batch, embedded), torch.tensor([expected]))
    torch.testing.assert_close(model(batch, embedded), model.top(torch.tensor([expected])).squeeze(-1))


def test_one_sparse_feature_without_numeric_ones_is_refused_unless_it_interacts_with_itself():
    """No pair to take a dot product of: the top MLP read an empty input and scored every
    row alike."""
    from ctr.errors import RecipeError

    with pytest.raises(RecipeError, match=r"^model: dlrm on one sparse feature and no numeric one"):
        task_for_schema(planted_schema(1, 5), {"name": "dlrm", "bottom_mlp": [], "top_mlp": [4]})
    alone = task_for_schema(planted_schema(1, 5), {"name": "dlrm", "top_mlp": [4], "interaction_self": True})
    assert alone.net.model.top.net[0].in_features == 1
