"""AutoInt's embedding dropout (an option of the authors' code, shichence/AutoInt model.py):
the field vectors both parts read are dropped out while training, untouched at evaluation."""

import pytest
import torch
import torch.nn.functional as F

from ctr.errors import RecipeError
from ctr.recipe import recipe_from_dict

from tests.models.helpers import first_batch, make_task


def test_embedding_dropout_drops_the_field_vectors_both_parts_read(tiny_prepared):
    task = make_task(tiny_prepared, {"name": "autoint_plus", "layers": 1, "head_dim": 4, "hidden": [8],
                                     "embedding_dropout": 0.5})
    model = task.net.model
    batch = first_batch(tiny_prepared, size=16)
    embedded = task.net.embedding(batch.sparse)
    fields = torch.cat([embedded.pooled, model.numeric(batch.dense)], 1)

    def by_hand(x):
        return model.attention_logit(x) + model.dnn(x.flatten(1)).squeeze(-1)

    model.train()
    torch.manual_seed(3)
    trained = model(batch, embedded)
    torch.manual_seed(3)
    kept = F.dropout(torch.ones_like(fields), 0.5)  # the same draws: 0 or 1 / (1 − p)
    assert 0 < (kept == 0).sum() < kept.numel()
    torch.testing.assert_close(trained, by_hand(fields * kept))
    model.eval()
    torch.testing.assert_close(model(batch, embedded), by_hand(fields))


@pytest.mark.parametrize("name", ["autoint", "autoint_plus"])
def test_embedding_dropout_outside_its_range_is_refused_naming_the_value(name):
    with pytest.raises(RecipeError, match=r"^model\.embedding_dropout: must be in \[0, 1\), got 1\.0$"):
        recipe_from_dict({"model": {"name": name, "embedding_dropout": 1}})
