"""``python -m sd_inspire``: the command line ``sd-inspire`` (see :func:`sd_inspire._cli.main`)."""

from __future__ import annotations

import sys

from sd_inspire._cli import main

if __name__ == "__main__":
    sys.exit(main())
