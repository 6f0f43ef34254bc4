import numpy as np
import torch

from ctr.batch import JaggedFeatures
from ctr.embeddings.full import FullEmbedding
from ctr.recipe import EmbeddingConfig
from ctr.schema import FeatureInfo, FeatureSpec, Schema


def embed(padding):
    spec = FeatureSpec(name="hist", kind="sequence", pooling="none", padding=padding)
    schema = Schema(features=[FeatureInfo(spec, vocab_size=6, table="hist")], label="y", counts={"hist": np.ones(6, dtype=np.int64)})
    torch.manual_seed(0)
    method = FullEmbedding(schema, EmbeddingConfig(dim=3))
    # B = 2: lengths 3 and 1
    out = method(JaggedFeatures.from_lengths(["hist"], torch.tensor([2, 3, 4, 5]), torch.tensor([3, 1])))
    return method, out.sequences["hist"], out.masks["hist"]


def test_left_padding_puts_the_most_recent_item_last():
    method, right, right_mask = embed("right")
    _, left, left_mask = embed("left")
    w = method.weight.detach()
    start = method.table_start[0].item()
    assert right_mask.tolist() == [[True, True, True], [True, False, False]]
    assert left_mask.tolist() == [[True, True, True], [False, False, True]]
    torch.testing.assert_close(left[0], right[0])
    torch.testing.assert_close(left[1, 2], w[start + 5])
    torch.testing.assert_close(left[1, :2], torch.zeros(2, 3))
