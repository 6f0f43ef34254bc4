"""Every method refuses an id outside its feature's vocabulary: given through the Python API,
``full`` read the next table's row for an id one past its feature's vocabulary."""

import pytest
import torch

from ctr.batch import JaggedFeatures
from ctr.registry import EMBEDDINGS
from ctr.schema import FeatureInfo, FeatureSpec, Schema
from tests.embeddings.schemas import VOCABS, batch, schema
from tests.embeddings.test_compression_methods import METHODS

UNBUDGETED = ("full", "optembed")


def method(name: str):
    entry = EMBEDDINGS.get(name)
    options = {**METHODS.get(name, {}), **({} if name in UNBUDGETED else {"budget": 0.5})}
    return entry.target(schema(), entry.config(dim=16, **options))


def with_id(good: JaggedFeatures, feature: str, new_id: int) -> JaggedFeatures:
    """``good`` with the first id of ``feature`` replaced by ``new_id``."""
    values = good.values.clone()
    start, _ = good.feature_slice(feature)
    values[start] = new_id
    return JaggedFeatures(good.keys, values, good.offsets)


@pytest.mark.parametrize("name", [entry.name for entry in EMBEDDINGS.entries()])
def test_an_id_outside_its_features_vocabulary_is_refused_naming_the_feature(name):
    embedding = method(name).eval()
    good = batch()
    assert embedding(good).pooled.shape == (8, 3, 16)  # hist keeps its positions
    for feature, bad_id in (("item", VOCABS["item"]), ("user", -1), ("tags", VOCABS["tags"])):
        with pytest.raises(ValueError, match=f"feature '{feature}': id {bad_id} is outside its vocabulary"):
            embedding(with_id(good, feature, bad_id))
    embedding(with_id(good, "user", VOCABS["user"] - 1))  # the last id is in it


def test_single_id_batches_are_checked_too():
    """A batch of one id a feature takes the grid path, which skips the bags."""
    features = [FeatureInfo(FeatureSpec(name=name), vocab_size=VOCABS[name], table=name) for name in ("item", "user")]
    embedding = EMBEDDINGS.get("full").target(Schema(features, "y"), EMBEDDINGS.get("full").config(dim=4))
    assert embedding(JaggedFeatures.from_dense(["item", "user"], torch.tensor([[5, 599]]))).pooled.shape == (1, 2, 4)
    with pytest.raises(ValueError, match="feature 'user': id 600 is outside its vocabulary of 600 ids"):
        embedding(JaggedFeatures.from_dense(["item", "user"], torch.tensor([[5, 600]])))
