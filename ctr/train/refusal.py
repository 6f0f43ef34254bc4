"""Whether a recipe's embedding method refuses its budget on the prepared data, told before
any training (``ctr tune`` and ``ctr bench compression`` skip such points and say why)."""

from __future__ import annotations

from ctr.datasets import prepare
from ctr.embeddings.budget import BudgetUnreachableError, ComputeLimitError
from ctr.recipe import Recipe
from ctr.registry import EMBEDDINGS


def budget_refusal(recipe: Recipe) -> str | None:
    """``cannot reach (min x)`` or ``not run: compute (...)`` when the method refuses the
    budget (built on the prepared schema, no training), else None (at once without a budget)."""
    if recipe.embedding.budget is None:
        return None
    schema = prepare(recipe.data, progress=False).schema
    try:
        EMBEDDINGS.get(recipe.embedding.method).target(schema, recipe.embedding)
    except BudgetUnreachableError as err:
        return f"cannot reach (min {err.shown_min})"
    except ComputeLimitError as err:
        return f"not run: compute ({err.estimate})"
    return None
