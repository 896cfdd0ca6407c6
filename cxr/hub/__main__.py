"""``python -m cxr.hub push|space ...`` (:func:`cxr.cli.hub_main`)."""

import sys

from cxr.cli import hub_main

sys.exit(hub_main())
