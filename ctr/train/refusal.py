"""Whether a recipe's embedding method refuses its budget on the prepared data, told before
any training (``ctr tune`` and ``ctr bench compression`` skip such points and say why)."""

from __future__ import annotations

from ctr.datasets import prepare
from ctr.embeddings.budget import BudgetUnreachableError, ComputeLimitError
from ctr.errors import UserError
from ctr.recipe import Recipe
from ctr.registry import EMBEDDINGS


class MethodFailed(Exception):
    """The method's unexpected error (not a UserError: a plugin's bug) while it was built to
    ask its budget, which is this one's ``__cause__``; an error of preparing the data is not one."""


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
    except UserError:
        raise
    except Exception as err:
        raise MethodFailed(f"{recipe.embedding.method}: {err}") from err
    return None
