"""Wide & Deep on a hand-built batch: the wide part is linear over the ids (⟨u_f, e_f⟩) and
the numeric values, and the two logits are summed (Cheng et al. 2016, Eq. 3)."""

import torch

from ctr.batch import Batch, JaggedFeatures
from tests.models.helpers import planted_schema, task_for_schema


def test_wide_logit_of_a_hand_built_batch_plus_the_deep_logit():
    task = task_for_schema(planted_schema(2, 5, dense=1), {"name": "wdl", "hidden": [4]}, embedding={"dim": 2})
    model = task.net.model
    batch = Batch(torch.tensor([[2.0]]), JaggedFeatures.from_dense(["c0", "c1"], torch.tensor([[2, 3]])), torch.ones(1))
    embedded = task.net.embedding(batch.sparse)
    embedded = type(embedded)(torch.tensor([[[1.0, 2.0], [3.0, -1.0]]]), {}, {}, None)
    with torch.no_grad():
        model.wide.field_weight.copy_(torch.tensor([[0.5, 1.0], [2.0, 0.0]]))
        model.wide.dense.weight.fill_(3.0)
        model.wide.dense.bias.zero_()
        model.wide.bias.fill_(0.25)
    model.eval()
    # wide: ⟨[0.5, 1], [1, 2]⟩ + ⟨[2, 0], [3, −1]⟩ + 3·2 + 0.25 = 2.5 + 6 + 6 + 0.25
    deep = model.deep(torch.tensor([[1.0, 2.0, 3.0, -1.0, 2.0]])).squeeze(-1)
    torch.testing.assert_close(model(batch, embedded), 14.75 + deep)
    with torch.no_grad():
        model.deep.net[-1].weight.zero_()
        model.deep.net[-1].bias.zero_()
    torch.testing.assert_close(model(batch, embedded), torch.tensor([14.75]))
