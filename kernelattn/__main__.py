"""``python -m kernelattn``: the ``kernelattn`` command line."""

import sys

from kernelattn.cli import main

if __name__ == "__main__":
    sys.exit(main())
