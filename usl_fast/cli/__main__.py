"""``python -m usl_fast.cli ...``, as ``usl-fast ...`` and ``python -m usl_fast ...``."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
