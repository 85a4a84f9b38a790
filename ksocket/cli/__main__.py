"""``python -m ksocket.cli``: the ``ksocket`` command."""

import sys

from ksocket.cli import main

sys.exit(main())
