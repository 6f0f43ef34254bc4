"""``python -m ctr`` (and ``torchrun -m ctr``): the ``ctr`` command line."""

import sys

from ctr.cli import main

sys.exit(main())
