"""``python -m cxr.calibrate --model MODEL --data SITE_FOLDER --output-dir OUT``: set a model's screening decision
again for another hospital.

Research use only — not for diagnosis. The options are :mod:`cxr.commands.calibrate`'s; the work lives in
:func:`cxr.training.site_calibration.recalibrate`.
"""

import sys

from cxr.commands.calibrate import main as calibrate_main

if __name__ == "__main__":
    sys.exit(calibrate_main())
