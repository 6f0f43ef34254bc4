"""A method's vectors are checked against the contract (float [B, F, D], D = embedding.dim):
a plugin's narrower rows, [N] vectors or float64 reached the model as other shapes and
failed there ("mat1 and mat2 shapes cannot be multiplied") or broadcast."""

import pytest
import torch
from torch import nn

from ctr.embeddings.base import EmbeddingMethod
from ctr.errors import RecipeError
from ctr.recipe import EmbeddingConfig
from tests.embeddings.schemas import batch, schema


class Shaped(EmbeddingMethod):
    """A plugin-like method whose ``embed_ids`` returns ``shape_of(n)`` vectors of ``dtype``."""

    def __init__(self, shape_of, dtype=torch.float32):
        super().__init__(schema(), EmbeddingConfig(method="shaped", dim=16))
        self.shape_of, self.dtype = shape_of, dtype
        self.scale = nn.Parameter(torch.ones(()))

    def embed_ids(self, feature, ids):
        return self.scale * torch.ones(self.shape_of(ids.numel()), dtype=self.dtype)

    def memory_bytes(self) -> int:
        return 4


@pytest.mark.parametrize("shape_of, dtype, got", [
    (lambda n: (n, 8), torch.float32, r"torch\.float32 \[8, 3, 8\]"),
    (lambda n: (n,), torch.float32, r"torch\.float32 \[8, 3, \d+\]"),  # [N] broadcast against the mean weights
    (lambda n: (n, 16), torch.float64, r"torch\.float64 \[8, 3, 16\]"),
])
def test_vectors_other_than_float_b_f_d_are_refused_naming_the_method(shape_of, dtype, got):
    with pytest.raises(RecipeError, match=r"^embedding\.method: Shaped embedded the batch as " + got
                       + r"; a method gives float32 \(or narrower\) vectors \[8, 3, 16\]"):
        Shaped(shape_of, dtype)(batch())


def test_vectors_of_the_contract_pass():
    assert Shaped(lambda n: (n, 16))(batch()).pooled.shape == (8, 3, 16)
