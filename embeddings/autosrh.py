"""``autosrh``: AutoSrh — DNIS's soft selection over equal-size frequency groups."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ctr.embeddings.dnis import DNIS, DNISConfig
from ctr.recipe import OptimizerConfig
from ctr.registry import EMBEDDINGS


@dataclass
class AutoSrhConfig(DNISConfig):
    """Settings of ``autosrh`` (those of ``dnis``, with the artifact's defaults).

    Args:
        blocks: the frequency groups (the artifact's ``nsplit``, 6), each as many ids.
        arch_optimizer: optimizer of α (the artifact's ``alpha_lr`` 0.001).
    """

    method: str = "autosrh"
    blocks: int = 6
    arch_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="sgd", lr=1e-3))


def equal_count_blocks(counts: np.ndarray, blocks: int) -> np.ndarray:
    """Block of each row [R]: rows sorted by training count (most frequent first, ties by
    row) and cut into ``blocks`` groups of equal row counts (sizes differ by at most one)."""
    order = np.argsort(-counts, kind="stable")
    block = np.empty(counts.shape[0], dtype=np.int64)
    for index, part in enumerate(np.array_split(order, blocks)):
        block[part] = index
    return block


@EMBEDDINGS.register("autosrh", config=AutoSrhConfig)
class AutoSrh(DNIS):
    """AutoSrh: automated sparse representation search over frequency groups.

    Kong, Cheng, Shen, Huang, "AutoSrh: An Embedding Dimensionality Search Framework for
    Tabular Data Prediction", IEEE TKDE 2022 (the journal extension of DNIS); as the VLDB
    2024 benchmark's artifact (PKU-DAIR/Hetu, tools/EmbeddingMemoryCompression: ``nsplit``
    6, ``alpha_l1`` 1e-5, ``alpha_lr`` 0.001). Everything is ``dnis``'s (search with α per
    (group, dimension) in [0, 1] stepped on validation batches with per-group normalised
    gradients, prune to the budget's target in the shared sparse format, retrain) except the
    grouping: the ids of all tables, sorted by training frequency, are cut into ``blocks``
    groups of equal id counts (the artifact's ``get_whole_frequency_grouping``).

    Deviations: ids of equal count are split by row where a cut falls among them; the
    artifact moves the cut to the nearest change of count, so its groups are only about
    equal. The artifact (``methods/scheduler/autosrh.py``) also warms up a full table,
    steps only the table (not the net) on training batches during the search, and retrains
    the dense table under fixed α before it prunes; ctr prunes, then retrains the kept
    entries, as the paper.

    Shapes: ids [N] of features [N] → [N, D].
    """

    def group_rows(self, counts: np.ndarray) -> np.ndarray:
        return equal_count_blocks(counts, self.config.blocks)
