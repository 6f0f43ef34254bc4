"""ctr.models: the model zoo. Importing this package registers the built-in models."""

from ctr.models import deepfm, dlrm, lr  # noqa: F401  (registers the built-in models)
from ctr.models.base import CTRModel

__all__ = ["CTRModel"]
