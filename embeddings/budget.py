"""Budget helpers of the compressing methods: the one place that turns ``embedding.budget``
(a fraction of the full fp32 tables' bytes) into a method's sizes, and the errors a method
raises when it cannot reach a budget or would exceed its compute limit."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ctr.embeddings.storage import SEED_BYTES
from ctr.errors import RecipeError
from ctr.recipe import EmbeddingConfig
from ctr.recipe.checks import budget_needed
from ctr.schema import Schema

FP32_BYTES = 4


class BudgetUnreachableError(RecipeError):
    """The method cannot store its embeddings in ``budget`` × full bytes.

    Attributes:
        min_budget: the smallest budget the method can reach; shown_min: it rounded up to 3
            significant digits, as messages and "cannot reach (min x)" show it.
    """

    def __init__(self, method: str, budget: float, min_budget: float, why: str):
        self.min_budget = min_budget
        self.shown_min = f"{rounded_up(min_budget):.3g}"  # rounded up: the minimum shown is reached
        least = f"the smallest budget it reaches is {self.shown_min}" if min_budget <= 1 else \
            f"on this schema it needs more bytes than the full tables ({self.shown_min} of them)"
        super().__init__(f"embedding.budget: {budget:g} is too small for {method}: {why}; {least}")


def rounded_up(value: float, digits: int = 3) -> float:
    """``value`` rounded up to ``digits`` significant digits."""
    if value <= 0:
        return value
    step = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return math.ceil(round(value / step, 9)) * step


class ComputeLimitError(RecipeError):
    """Reaching the budget would take a knob past the method's documented compute limit.

    Attributes:
        estimate: what the budget would cost (e.g. ``"9.1 GFLOP per 4096 ids"``).
    """

    def __init__(self, method: str, budget: float, knob: str, estimate: str):
        super().__init__(
            f"embedding.budget: {budget:g} makes {method}'s {knob}, past its compute limit ({estimate}); "
            "choose a smaller budget or raise the limit"
        )
        self.estimate = estimate


def require_budget(config: EmbeddingConfig, method: str) -> float:
    """The budget of a method that sizes itself from it; a RecipeError when it is missing."""
    if config.budget is None:
        raise RecipeError(budget_needed(method))
    return config.budget


def full_bytes(tables: dict[str, int], dim: int) -> int:
    """Bytes of the uncompressed tables: every row × D in fp32."""
    return sum(tables.values()) * dim * FP32_BYTES


def budget_bytes(config: EmbeddingConfig, method: str, tables: dict[str, int]) -> float:
    """The bytes ``embedding.budget`` allows (budget × full bytes), widened by 1e-12 of itself
    (far below a byte) so that a budget typed as exactly the minimum a method names is not
    refused for a rounding error of the product."""
    return require_budget(config, method) * full_bytes(tables, config.dim) * (1 + 1e-12)


def largest_fitting(low: int, high: int, cost: Callable[[int], int], limit: float) -> int | None:
    """The largest knob k in [low, high] with ``cost(k) <= limit`` for a ``cost`` that grows
    with k (binary search); ``None`` when even ``cost(low)`` exceeds the limit."""
    if cost(low) > limit:
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if cost(middle) <= limit:
            low = middle
        else:
            high = middle - 1
    return low


def hashed_rows(tables: dict[str, int], dim: int, budget: float) -> dict[str, int]:
    """Rows of each table's hashed table so that rows × D floats plus seeds fit the budget.

    Every table gets a share of the budget's rows proportional to its vocabulary, at least
    one row and at most one per id (a table that keeps one row per id needs no seed); rows
    added by the one-row minimum are taken back from the largest tables.
    """
    row_bytes = dim * FP32_BYTES
    total = sum(tables.values())
    allowed = budget * total * row_bytes * (1 + 1e-12)  # as budget_bytes: the minimum a refusal names is reached
    budget_rows = math.floor((allowed - SEED_BYTES * len(tables)) / row_bytes)
    if budget_rows < len(tables):
        least = len(tables) * (row_bytes + SEED_BYTES) / (total * row_bytes)
        raise BudgetUnreachableError(
            "hash", budget, least, f"each of its {len(tables)} tables needs a row of {row_bytes} bytes and a seed"
        )
    return share_rows(tables, budget_rows)


def share_rows(sizes: dict[str, int], rows: int) -> dict[str, int]:
    """``rows`` split in proportion to ``sizes``: each name at least 1 and at most its size;
    rows added by the one-row minimum are taken back from the largest shares."""
    total = sum(sizes.values())
    shares = {name: min(size, max(1, math.floor(rows * size / total))) for name, size in sizes.items()}
    while sum(shares.values()) > rows:
        largest = max(shares, key=shares.__getitem__)
        shares[largest] -= 1
    return shares


def table_counts(schema: Schema, method: str) -> dict[str, np.ndarray]:
    """Training-split id frequencies [V_t] of every table; a one-line RecipeError naming the
    first table whose counts the schema lacks (frequency-aware methods need them)."""
    counts = {}
    for name, size in schema.tables().items():
        if name not in schema.counts:
            raise RecipeError(
                f"embedding.method: {method} needs the training frequencies of table {name!r} (schema counts.npz), "
                "which this schema lacks; prepare the data again"
            )
        known = np.asarray(schema.counts[name])[:size]
        counts[name] = np.concatenate([known, np.zeros(size - known.shape[0], dtype=known.dtype)])
    return counts


def capped_knob(
    method: str, budget: float, full: int, cost: Callable[[int], int], knob: tuple[str, int, int],
    estimate: Callable[[int], str],
) -> int:
    """The largest knob k ≥ 1 whose ``cost(k)`` bytes fit ``budget`` × ``full`` bytes.

    ``knob`` = (name, cap, upper): past ``cap`` (the method's compute limit) the budget is
    refused with a ``ComputeLimitError`` naming the k it needs (searched up to ``upper``)
    and ``estimate(k)``, unless ``cost`` gains nothing past ``cap`` (``cost(cap)`` is already
    ``cost(upper)``): then ``cap``. When k = 1 does not fit, a ``BudgetUnreachableError``.
    """
    name, cap, upper = knob
    limit = budget * full
    k = largest_fitting(1, cap + 1, cost, limit)
    if k is None:
        raise BudgetUnreachableError(method, budget, cost(1) / full, f"{name} 1 needs {cost(1)} bytes")
    if k > cap and cost(cap) >= cost(upper):  # past the cap nothing more is stored (ttrec: every table full rows)
        return cap
    if k > cap:
        wanted = largest_fitting(cap + 1, max(upper, cap + 1), cost, limit)
        raise ComputeLimitError(method, budget, f"{name} {wanted} > {cap}", estimate(wanted))
    return k
