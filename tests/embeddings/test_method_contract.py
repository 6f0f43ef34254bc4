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


class Counted(Shaped):
    """A plugin-like method whose ``memory_bytes`` returns ``stored``."""

    def __init__(self, stored):
        super().__init__(lambda n: (n, 16))
        self.stored = stored

    def memory_bytes(self):
        return self.stored


@pytest.mark.parametrize("stored, shown", [
    (torch.tensor(4096), r"tensor\(4096\)"), (-4096, "-4096"), (0, "0"), (4096 / 3, r"1365\.33+"), (True, "True"),
])
def test_a_count_of_bytes_other_than_a_positive_int_is_refused_naming_the_method(stored, shown):
    """A tensor ended a finished run in a JSON traceback without metrics.json; a negative or
    fractional count was written there and credited under a benchmark's budget."""
    with pytest.raises(RecipeError, match=r"^embedding\.method: Counted\.memory_bytes\(\) returned " + shown
                       + r"; a method returns the bytes its deployed embeddings keep, an int > 0$"):
        Counted(stored).stored_bytes()


def test_a_positive_integral_count_is_read_as_an_int():
    import numpy as np

    stored = Counted(np.int64(4096)).stored_bytes()
    assert stored == 4096 and type(stored) is int


def test_a_plugin_count_is_checked_before_training(tmp_path, monkeypatch, capsys):
    """The check runs when the network is built, not after the run."""
    source = ("import torch\n"
              "from ctr.embeddings.full import FullEmbedding\n"
              "from ctr.recipe import EmbeddingConfig\n"
              "from ctr.registry import EMBEDDINGS\n\n\n"
              "@EMBEDDINGS.register('tensor_bytes', config=EmbeddingConfig)\n"
              "class TensorBytes(FullEmbedding):\n"
              "    def memory_bytes(self):\n"
              "        return torch.tensor(super().memory_bytes())\n")
    assert train_with_method_plugin(tmp_path, monkeypatch, source, "tensor_bytes") == 2
    assert "ctr: error: embedding.method: TensorBytes.memory_bytes() returned tensor(" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize("grid", [False, True])
def test_vectors_of_other_than_one_an_id_are_refused_naming_the_method(grid):
    """``embed_ids`` of one vector too few: a traceback about tensor sizes ("The size of
    tensor a (322) must match the size of tensor b (323)") ended ``ctr train``."""
    method = Shaped(lambda n: (n - 1, 16))
    ids = batch()
    if grid:  # single ids only: the [B, F] grid path
        ids = type(ids).from_lengths(ids.keys, torch.full((32,), 2), torch.ones(32, dtype=torch.int64))
    with pytest.raises(RecipeError, match=r"^embedding\.method: Shaped\.embed_ids\(\) returned torch\.float32 \[\d+, 16\]"
                       r" for \d+ ids; a method gives one vector an id \(\[N, D\]\)$"):
        method(ids)


def test_a_method_implementing_neither_lookup_is_refused_when_built():
    """``embed_ids`` is the contract's required method: without it (or ``embed_bags``) the
    first batch ended in a NotImplementedError traceback."""
    class Lookupless(EmbeddingMethod):
        def __init__(self):
            super().__init__(schema(), EmbeddingConfig(method="lookupless", dim=16))

    with pytest.raises(RecipeError, match=r"^embedding\.method: Lookupless implements neither embed_ids\(feature, ids\) "
                                          r"nor embed_bags\(bags\); a method gives the vector of each id"):
        Lookupless()


class Bagged(Shaped):
    """A plugin-like method whose ``embed_bags`` returns ``shape_of(bags)`` vectors (or a list)."""

    def embed_bags(self, bags):
        shape = self.shape_of(bags.offsets.numel() - 1)
        return [[0.0] * 16] * shape[0] if self.dtype is list else self.scale * torch.ones(shape, dtype=self.dtype)


def single_ids():
    """``batch()``'s features with one id a bag: the [B, F] grid path."""
    ids = batch()
    return type(ids).from_lengths(ids.keys, torch.full((32,), 2), torch.ones(32, dtype=torch.int64))


@pytest.mark.parametrize("grid", [False, True])
@pytest.mark.parametrize("shape_of, dtype, got", [
    (lambda n: (n - 1, 16), torch.float32, r"torch\.float32 \[\d+, 16\]"),  # an IndexError traceback
    (lambda n: (n + 1, 16), torch.float32, r"torch\.float32 \[\d+, 16\]"),  # read silently, the last bag dropped
    (lambda n: (2 * n, 16), torch.float32, r"torch\.float32 \[\d+, 16\]"),  # read silently as other bags
    (lambda n: (n,), torch.float32, r"torch\.float32 \[\d+\]"),  # "shape '[3, 8, 47]' is invalid"
    (lambda n: (n,), list, "a list"),  # "'list' object has no attribute 'shape'"
], ids=["fewer", "one_more", "twice", "flat", "list"])
def test_bags_other_than_one_vector_a_bag_are_refused_naming_the_method(shape_of, dtype, got, grid):
    with pytest.raises(RecipeError, match=r"^embedding\.method: Bagged\.embed_bags\(\) returned " + got
                       + r" for \d+ bags; a method gives one vector a bag \(\[num_bags, D\]"):
        Bagged(shape_of, dtype)(single_ids() if grid else batch())


def test_bags_of_the_contract_pass():
    assert Bagged(lambda n: (n, 16))(batch()).pooled.shape == (8, 3, 16)
    assert Bagged(lambda n: (n, 16))(single_ids()).pooled.shape == (8, 3, 16)


def test_a_method_that_is_not_an_embedding_method_is_one_line(tmp_path, monkeypatch, capsys):
    """A plugin's plain ``nn.Module`` was an AttributeError traceback (``stored_bytes``)."""
    source = ("from torch import nn\n"
              "from ctr.recipe import EmbeddingConfig\n"
              "from ctr.registry import EMBEDDINGS\n\n\n"
              "@EMBEDDINGS.register('plain_method', config=EmbeddingConfig)\n"
              "class PlainMethod(nn.Module):\n"
              "    def __init__(self, schema, config):\n"
              "        super().__init__()\n")
    assert train_with_method_plugin(tmp_path, monkeypatch, source, "plain_method") == 2
    assert capsys.readouterr().err.strip() == (
        "ctr: error: embedding.method: plain_method built a PlainMethod, not a "
        "ctr.embeddings.base.EmbeddingMethod (subclass it: the network calls what it defines)")


def train_with_method_plugin(tmp_path, monkeypatch, source: str, method: str) -> int:
    """``ctr train`` of a tiny recipe whose embedding is ``method``, registered by a plugin
    module of ``source``: its exit code."""
    import yaml

    from ctr.cli import main
    from tests.conftest import tiny_recipe

    (tmp_path / f"{method}_plugin.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = tiny_recipe(tmp_path, plugins=[f"{method}_plugin"])
    raw["embedding"] = {**raw.get("embedding", {}), "method": method}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    return main(["train", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "run")])
