"""``python -m cxr.eval --model DIR_OR_REPO --data DIR --output-dir DIR``: evaluate a checkpoint.

Research use only — not for diagnosis. The options are :mod:`cxr.commands.eval`'s; the scoring
lives in :func:`cxr.training.evaluation.evaluate_folder`.
"""

import sys

from cxr.commands.eval import main as eval_main

if __name__ == "__main__":
    sys.exit(eval_main())
