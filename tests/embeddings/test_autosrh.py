import numpy as np
import torch

from ctr.embeddings.autosrh import AutoSrh, AutoSrhConfig, equal_count_blocks
from ctr.embeddings.dnis import DNIS, DNISConfig
from tests.embeddings.schemas import schema


def test_groups_have_equal_id_counts_most_frequent_first():
    counts = np.array([5, 100, 0, 7, 50, 1])
    block = equal_count_blocks(counts, 3)
    assert block.tolist() == [1, 0, 2, 1, 0, 2]  # [100, 50] [7, 5] [1, 0]


def test_autosrh_groups_all_tables_ids_into_equal_blocks_where_dnis_uses_occurrence_shares():
    method = AutoSrh(schema(), AutoSrhConfig(dim=8, budget=0.3))
    sizes = torch.bincount(method.block_of_row, minlength=6).tolist()
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 1640
    dnis = DNIS(schema(), DNISConfig(dim=8, budget=0.3, blocks=6))
    assert torch.bincount(dnis.block_of_row, minlength=6).tolist() != sizes  # Zipf: frequent blocks are small
    assert (method.config.arch_optimizer.name, method.config.arch_optimizer.lr) == ("sgd", 1e-3)
