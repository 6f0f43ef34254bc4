"""ctr.models: the model zoo. Importing this package registers the built-in models."""

from ctr.models import autoint, autoint_plus, dcn, dcnv2, deepfm, din, dlrm, lr, wdl  # noqa: F401  (registers them)
from ctr.models.base import CTRModel

__all__ = ["CTRModel"]
