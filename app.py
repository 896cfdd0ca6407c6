"""The Gradio app (a Hugging Face Space's entry point): ``python app.py --models ORG/NAME,runs/x/model``.

Research use only — not for diagnosis. Flags: ``--help``; the page lives in :mod:`cxr.app.page`, its
computations in :mod:`cxr.app.board`.
"""

import sys

from cxr.commands.app import main as app_main

if __name__ == "__main__":
    sys.exit(app_main())
