"""``python -m lbclient`` / the ``lbclient`` console script: demo, probe, check-config."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
