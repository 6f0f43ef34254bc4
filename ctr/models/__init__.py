"""ctr.models: the model zoo. Built-in models register themselves when ``ctr.registry.MODELS``
looks their name up (one module each)."""

from ctr.models.base import CTRModel

__all__ = ["CTRModel"]
