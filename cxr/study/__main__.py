"""``python -m cxr.study ...`` (:func:`cxr.cli.study_main`)."""

import sys

from cxr.cli import study_main

sys.exit(study_main())
