import numpy as np
import pytest
import torch

from ctr.embeddings.dedup import DedupConfig, DedupEmbedding
from ctr.embeddings.lsh import BlockMatcher, third_quartile
from ctr.embeddings.stages import StageContext
from tests.embeddings.schemas import batch, schema

CONTEXT = StageContext(score=lambda: 0.5, seed=3)


def deduplicated(budget, prepare=None):
    """A dedup method taken through its stages by hand (no training); the table before dedup."""
    method = DedupEmbedding(schema(), DedupConfig(dim=8, budget=budget, block_rows=4))
    warmup, dedup, finetune = method.stages()
    method.begin_stage(warmup)
    if prepare:
        prepare(method)
    table = method.weight.detach().clone()
    method.begin_stage(dedup)
    method.run_procedure(dedup, CONTEXT)
    return method, table


def budget_for(unique_blocks, method_blocks=410, rows=1640, dim=8, block_rows=4):
    """The budget that holds exactly ``unique_blocks`` blocks plus the block index."""
    return (unique_blocks * block_rows * dim * 4 + 4 * method_blocks) / (rows * dim * 4)


def test_identical_blocks_are_merged_and_others_kept():
    duplicates = {5: 1, 9: 1, 301: 77, **{200 + i: 10 + i for i in range(17)}}  # block → the block it copies

    def plant(method):
        with torch.no_grad():
            method.weight.normal_(std=0.1)  # distinct blocks: few elements within 0.01
            blocks = method.weight.view(method.num_blocks, -1)
            for block, source in duplicates.items():
                blocks[block] = blocks[source]

    method, _ = deduplicated(budget_for(410 - len(duplicates)), plant)
    assert method.num_blocks == 410 and method.keep == 410 - len(duplicates)
    target = method.block_target
    for block, source in duplicates.items():
        assert target[block] == target[source]
    assert method.merge_report == {"merged": 20, "forced": 0, "identical": 20, "valid_auc_merged": 0.5}
    assert target.unique().numel() == method.keep


def test_bytes_fall_to_the_budget_and_ids_read_their_representative_block():
    method, table = deduplicated(0.3)
    target = method.block_target.clone()
    method.begin_stage(method.stages()[2])
    limit = 0.3 * method.full_bytes()
    assert method.memory_bytes() == method.keep * 4 * 8 * 4 + 4 * method.num_blocks <= limit
    assert method.memory_bytes() > limit - 4 * 8 * 4  # one more block would not fit
    assert method.weight.shape[0] == method.keep * 4 and method.block_index.dtype == torch.int32
    ids = torch.arange(2, 1000)
    got = method.embed_ids(torch.zeros_like(ids), ids)
    want = table[target[ids // 4] * 4 + ids % 4]
    torch.testing.assert_close(got, want)
    out = method(batch())
    out.pooled.sum().backward()
    assert method.weight.grad.is_sparse


def test_a_short_supply_of_similar_blocks_is_forced_to_the_budget():
    method, _ = deduplicated(0.05)
    report = method.merge_report
    assert report["merged"] == method.num_blocks - method.keep and report["forced"] > 0
    assert method.block_target.unique().numel() == method.keep


def test_third_quartile_is_numpys_and_candidates_come_earlier():
    blocks = torch.randn(300, 24)
    np.testing.assert_allclose(third_quartile(blocks).numpy(), np.percentile(blocks.numpy(), 75, axis=1), rtol=1e-5)
    matcher = BlockMatcher(8, 1.0, 0.01, torch.Generator().manual_seed(0))
    rank = torch.randperm(300)
    candidates = matcher.candidates(blocks, rank)
    found = candidates >= 0
    assert found.any()
    assert (rank[candidates[found]] < rank.unsqueeze(1).expand_as(candidates)[found]).all()


def test_after_merging_every_block_reads_as_its_representative():
    method, table = deduplicated(0.3)
    blocks = method.weight.detach().view(method.num_blocks, -1)
    before = table.view(method.num_blocks, -1)
    torch.testing.assert_close(blocks, before[method.block_target])


def test_the_padded_last_block_is_no_merge_target_and_compares_its_real_rows():
    """As the artifact (``DedupTrainer.deduplicate``): the last block, zero-padded past the
    table's rows, is never inserted into the LSH index (no block merges into it) and is
    compared on its real elements only."""
    vocabs = {"item": 1000, "user": 600, "tags": 42}  # 1642 rows: the last block of 4 has 2
    method = DedupEmbedding(schema(vocabs), DedupConfig(dim=8, budget=0.9, block_rows=4, lsh_width=1e9))
    warmup, dedup, _ = method.stages()
    method.begin_stage(warmup)
    with torch.no_grad():
        method.weight.normal_(std=0.1)
        blocks = method.weight.view(method.num_blocks, -1)
        last = method.num_blocks - 1
        blocks[last, 16:] = 0.5  # the padding rows, never trained
        blocks[5] = blocks[last] + 1e-3  # a copy of the whole padded block, visited after it
    method.begin_stage(dedup)
    method.run_procedure(dedup, CONTEXT)
    target = method.block_target
    assert (target[:last] != last).all()


def test_a_padded_block_is_compared_on_its_real_elements():
    matcher = BlockMatcher(4, 1e9, 0.01, torch.Generator().manual_seed(0))  # one bucket: each block's
    blocks = torch.arange(40, dtype=torch.float32).view(5, 8) / 10  # candidate is the block before it
    blocks[4, :4] = blocks[3, :4]  # the last block's 4 real elements copy block 3's
    blocks[4, 4:] = 9.0  # padding
    target, report = matcher.merge(blocks, 1, 0.7, valid=4)
    assert target.tolist() == [0, 1, 2, 3, 3] and report["forced"] == 0


def test_a_padded_block_first_in_quartile_order_takes_no_forced_merge():
    """Blocks without LSH candidates are forced into their predecessor in quartile order; the
    padded last block, first in that order, is no block's predecessor and merges into the
    first other block."""
    matcher = BlockMatcher(4, 1e-6, 0.01, torch.Generator().manual_seed(0))  # narrow buckets: no candidates
    blocks = torch.arange(40, dtype=torch.float32).view(5, 8)  # quartile order 4, 0, 1, 2, 3
    blocks[4] = -10.0 - torch.arange(8.0)
    target, report = matcher.merge(blocks, 2, 0.7, valid=4)
    assert target.tolist() == [0, 0, 2, 3, 0] and report == {"merged": 2, "forced": 2, "identical": 0}


def test_lsh_tables_past_memory_are_refused_as_the_net_is_built(monkeypatch):
    """Each table holds a candidate (int64) and its similarity (float32) per block: 7e7 tables
    of 410 blocks (~320 GiB) merge within the time limit but not in a machine's memory."""
    from ctr.embeddings import dedup
    from ctr.errors import RecipeError, scoring_a_saved_run

    message = (r"^embedding\.lsh_tables: 70000000 tables of 410 blocks need ~320\.7 GiB for the index's "
               r"candidates \(12 bytes a block and table\), more than this machine's 1\.0 GiB; lower it$")
    monkeypatch.setattr(dedup, "memory_bytes", lambda: 2**30)
    with pytest.raises(RecipeError, match=message):
        DedupEmbedding(schema(), DedupConfig(dim=8, budget=0.5, block_rows=4, lsh_tables=70_000_000))
    assert DedupEmbedding(schema(), DedupConfig(dim=8, budget=0.5, block_rows=4, lsh_tables=200_000)).num_blocks == 410
    with scoring_a_saved_run():
        method = DedupEmbedding(schema(), DedupConfig(dim=8, budget=0.5, block_rows=4, lsh_tables=70_000_000))
    assert method.num_blocks == 410


@pytest.mark.parametrize("memory", [2**30, 2**50])
def test_lsh_tables_past_the_merge_time_limit_are_refused_as_the_net_is_built(monkeypatch, memory):
    """10^8 tables of 410 blocks of 4 × 8 would hash and compare 1.3e12 block elements (hours
    of merging at ~1e8 a second): refused by that limit on a machine of any memory (their
    ~458 GiB of index is past a small one's too); 7.6e7 tables stay under the 1e12 limit."""
    from ctr.embeddings import dedup
    from ctr.errors import RecipeError, scoring_a_saved_run

    message = (r"^embedding\.lsh_tables: 100000000 tables of 410 blocks of 4 × 8 elements hash and compare 1\.31e\+12 "
               r"elements, past dedup's limit of 1e\+12 \(about 3 hours of merging\); lower it$")
    monkeypatch.setattr(dedup, "memory_bytes", lambda: memory)
    with pytest.raises(RecipeError, match=message):
        DedupEmbedding(schema(), DedupConfig(dim=8, budget=0.5, block_rows=4, lsh_tables=10**8))
    with scoring_a_saved_run():
        assert DedupEmbedding(schema(), DedupConfig(dim=8, budget=0.5, block_rows=4, lsh_tables=10**8)).keep > 0
    if memory == 2**50:
        below = DedupConfig(dim=8, budget=0.5, block_rows=4, lsh_tables=76_000_000)
        assert DedupEmbedding(schema(), below).num_blocks == 410


def test_lsh_tables_refused_since_are_taken_while_a_run_past_its_merge_is_resumed():
    """The limits bound the merge (the ``dedup`` stage): a resumed run that finished it goes on
    with the L it merged with; one that has not is refused (it would merge again)."""
    from ctr.embeddings.stages import stages_finished
    from ctr.errors import RecipeError

    config = DedupConfig(dim=8, budget=0.5, block_rows=4, lsh_tables=10**8)
    with stages_finished(["warmup", "dedup"]):
        assert DedupEmbedding(schema(), config).num_blocks == 410
    with stages_finished(["warmup"]), pytest.raises(RecipeError, match=r"^embedding\.lsh_tables: 100000000 tables"):
        DedupEmbedding(schema(), config)
