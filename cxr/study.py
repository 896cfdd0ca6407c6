"""``python -m cxr.study --data DATA --output-dir DIR``: rerun the seed study. Research use only — not for
diagnosis. The logic lives in :mod:`cxr.reproduction`."""

import sys

from cxr.commands.study import main

if __name__ == "__main__":
    sys.exit(main())
