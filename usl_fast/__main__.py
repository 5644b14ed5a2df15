"""``python -m usl_fast ...`` runs the ``usl-fast`` command line (see ``usl_fast.cli``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
