"""DCN and DCN-V2 without a deep network: ``hidden: []`` leaves the cross network and the
logit layer over its output x_L (as FuxiCTR's DCN and DCNv2 drop a DNN without layers), not
a logit over [x_L, x_0]."""

import pytest
import torch

from ctr.errors import RecipeError
from ctr.recipe import recipe_from_dict
from tests.models.helpers import planted_batches, planted_schema, task_for_schema


@pytest.mark.parametrize(("name", "extra"), [("dcn", {}), ("dcnv2", {"structure": "parallel"}),
                                             ("dcnv2", {"structure": "stacked"})])
def test_without_hidden_layers_the_logit_reads_the_cross_output_alone(name, extra):
    schema = planted_schema(3, 5, dense=2)
    model = task_for_schema(schema, {"name": name, "hidden": [], "cross_layers": 2, **extra},
                            embedding={"dim": 4}).net.model.eval()
    batch = planted_batches(schema, lambda ids, dense: torch.zeros(len(ids)), 8, 8, seed=0)[0]
    embedded = task_for_schema(schema, {"name": "lr"}, embedding={"dim": 4}).net.embedding(batch.sparse)
    x0 = torch.cat([embedded.pooled.flatten(1), batch.dense], dim=1)
    assert model.out.in_features == x0.shape[1] == 3 * 4 + 2
    torch.testing.assert_close(model(batch, embedded), model.out(model.cross(x0)).squeeze(-1))


def test_a_mixture_without_low_rank_is_refused_naming_the_key():
    """DCN-Mix (experts > 1) mixes low-rank experts: without ``low_rank`` the recipe is
    refused at ``model.experts``, the key that asks for the mixture."""
    with pytest.raises(RecipeError, match=r"^model\.experts: 2 \(DCN-Mix\) needs model\.low_rank"):
        recipe_from_dict({"model": {"name": "dcnv2", "experts": 2}})
