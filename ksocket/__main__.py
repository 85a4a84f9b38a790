import sys

from ksocket.cli import main

sys.exit(main())
