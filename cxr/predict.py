"""``python -m cxr.predict INPUT... --model DIR_OR_REPO [--model ...] --output predictions.csv``: classify films.

Files, folders (recursive) or glob patterns of PNG, JPEG and DICOM chest X-rays; one CSV row per file and model.
Research use only — not for diagnosis. The logic lives in :mod:`cxr.models.batch_predict`.
"""

import sys

from cxr.commands.predict import main as predict_main

if __name__ == "__main__":
    sys.exit(predict_main())
