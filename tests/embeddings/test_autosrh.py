import numpy as np
import pytest
import torch

from ctr.embeddings.autosrh import AutoSrh, AutoSrhConfig, equal_count_blocks
from ctr.embeddings.dnis import DNIS, DNISConfig
from ctr.errors import RecipeError
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


@pytest.mark.parametrize("blocks", [1641, 10**8])  # 10**8 cut 1640 ids one block at a time, for minutes
def test_more_blocks_than_ids_is_refused_naming_the_key(blocks):
    with pytest.raises(RecipeError, match=rf"^embedding\.blocks: {blocks} is more than the 1640 ids of all tables"):
        AutoSrh(schema(), AutoSrhConfig(dim=8, budget=0.3, blocks=blocks))
    assert torch.bincount(AutoSrh(schema(), AutoSrhConfig(dim=8, budget=0.3, blocks=1640)).block_of_row).max() == 1
