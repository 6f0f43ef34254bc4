"""docs/extending.md's example compression method works as documented."""

import torch
import yaml

from ctr.datasets import BatchLoader, prepare
from ctr.recipe import recipe_from_dict
from ctr.registry import EMBEDDINGS
from tests.datasets.test_plugin_doc import documented_block


def test_documented_compression_method_meets_its_budget_and_trains(tmp_path, monkeypatch):
    (tmp_path / "two_probe.py").write_text(documented_block("# two_probe.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = yaml.safe_load(documented_block_yaml("# two_probe.yaml"))
    raw["data"].update(rows=4000, cache_dir=str(tmp_path / "cache"))
    recipe = recipe_from_dict(raw)
    prepared = prepare(recipe.data, progress=False)
    method = EMBEDDINGS.get("two_probe").target(prepared.schema, recipe.embedding)
    assert method.memory_bytes() <= 0.1 * method.full_bytes()
    batch = next(iter(BatchLoader(prepared.split_dir("train"), prepared.schema, 64)))
    out = method(batch.sparse)
    assert out.pooled.shape == (64, len(method.feature_names), 16)
    out.pooled.sum().backward()
    grad = method.weight.grad
    assert grad.is_sparse and 0 < grad.coalesce()._nnz() <= 2 * batch.sparse.values.numel()
    first = method.embed_ids(torch.tensor([0, 1]), torch.tensor([5, 5]))
    assert not torch.equal(first[0], first[1])  # the same id in two features: other rows


def documented_block_yaml(first_line: str) -> str:
    from tests.datasets.test_plugin_doc import DOCS

    for block in DOCS.read_text().split("```yaml\n")[1:]:
        if block.startswith(first_line):
            return block.split("```")[0]
    raise AssertionError(f"docs/extending.md has no yaml block starting with {first_line!r}")
