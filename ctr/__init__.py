"""ctr: an embedding-table-centric framework for click-through-rate models.

Importing ``ctr`` is light on purpose: it pulls in none of Lightning, torchrec or the models.
"""

__version__ = "0.1.0"
