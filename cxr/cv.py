"""``python -m cxr.cv --data DIR --output-dir DIR --folds 5 [training flags]``: cross-validate a recipe.

Research use only — not for diagnosis. The logic lives in :mod:`cxr.training.cv`.
"""

import sys

from cxr.commands.cv import main as cv_main

if __name__ == "__main__":
    sys.exit(cv_main())
