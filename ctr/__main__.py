"""``python -m ctr`` (and ``torchrun -m ctr``): the ``ctr`` command line."""

from ctr.cli import entry

entry()
