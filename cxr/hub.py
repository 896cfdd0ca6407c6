"""``python -m cxr.hub push RUN_DIR ORG/NAME`` / ``python -m cxr.hub space OWNER/NAME --models ...``: publish runs
and deploy the Space. Research use only — not for diagnosis. The logic lives in :mod:`cxr.publishing`."""

import sys

from cxr.commands.hub import main

if __name__ == "__main__":
    sys.exit(main())
