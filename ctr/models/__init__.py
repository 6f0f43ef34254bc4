"""ctr.models: the model zoo. Importing this package registers the built-in models."""

from ctr.models import dlrm, lr  # noqa: F401  (register "dlrm", "lr")
from ctr.models.base import CTRModel

__all__ = ["CTRModel"]
