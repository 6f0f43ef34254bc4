"""ctr.datasets: readers, preprocessing, the encoded store, the loader and built-in datasets.

Importing this package registers the built-in datasets in ``ctr.registry.DATASETS``.
"""

from ctr.datasets import amazon, avazu, criteo, libsvm, movielens, synthetic, tabular  # noqa: F401  (built-ins)
from ctr.datasets.loader import BatchLoader
from ctr.datasets.preprocess import Prepared, prepare

__all__ = ["BatchLoader", "Prepared", "prepare"]
