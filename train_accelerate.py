"""Fine-tune a chest X-ray classifier: ``accelerate launch train_accelerate.py --model resnet50 --data DIR
--output-dir runs/resnet50`` (plain ``python train_accelerate.py ...`` works too, on one process).

Research use only — not for diagnosis. Flags: ``--help``; the logic lives in :mod:`cxr.training.loop`.
"""

import sys

from cxr.commands.train import main as train_main

if __name__ == "__main__":
    sys.exit(train_main())
