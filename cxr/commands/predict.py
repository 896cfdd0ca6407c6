"""``python -m cxr.predict``: files, folders or globs of films classified by one or more models, one CSV row per
file and model (:mod:`cxr.models.batch_predict`), each model in its own classes (a probability column per class of
the models; a row leaves blank a class its model does not have)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Dict, List, Optional

from cxr.commands.common import add_option_flags, check_options, make_parser, parse_options, run_cli
from cxr.data.inputs import find_films
from cxr.errors import CXRError
from cxr.labels import DISCLAIMER
from cxr.models.batch_predict import csv_classes, predict_films, write_rows
from cxr.models.cam import CAM_METHODS
from cxr.models.classifier import CXRClassifier
from cxr.options import option
from cxr.run_folder import check_writable

__all__ = ["PredictOptions", "build_parser", "main"]

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class PredictOptions:
    """The flags of ``python -m cxr.predict``."""

    inputs: List[str] = option(
        help="Files, folders (searched recursively) or glob patterns.", positional=True, nargs="+", metavar="INPUT"
    )
    model: List[str] = option(
        help="A model folder or Hub repository id (ORG/NAME); repeat for several models.",
        action="append",
        required=True,
    )
    output: str = option("cxr-predict.csv", help="The CSV written (default: cxr-predict.csv).", type=Path)
    cam_dir: Optional[str] = option(
        None,
        help="Also write one Grad-CAM PNG per file and model (the decided class explained) into CAM_DIR/<model>/.",
        type=Path,
    )
    cam_method: str = option("GradCAM", help="The CAM method for --cam-dir.", choices=CAM_METHODS)
    batch_size: int = option(32, help="Films per forward pass.", minimum=1)
    num_workers: int = option(0, help="Loader worker processes decoding films.", minimum=0)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m cxr.predict``."""
    p = make_parser(
        "python -m cxr.predict",
        "Classify chest X-rays (PNG, JPEG, DICOM) with one or more cxr models: one CSV row per file and model, "
        "with the probabilities (a column per class of the models; blank for a class the row's model does not "
        "have), the argmax prediction, the decision by the model's saved operating point, the "
        "out-of-distribution flag and, for a file that cannot be read, why. Research use only — not for diagnosis.",
    )
    add_option_flags(p, PredictOptions)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m cxr.predict`` (``cxr-predict``): exit 0 when at least one file was classified,
    2 when none could be."""
    opts = parse_options(build_parser(), PredictOptions, argv)
    return run_cli(lambda: _predict(opts))


def _predict(opts: PredictOptions) -> None:
    check_options(opts)
    output, cam_dir = Path(opts.output), None if opts.cam_dir is None else Path(opts.cam_dir)
    if output.is_dir():
        raise CXRError(f"--output {output} is a folder; name the CSV file to write")
    check_writable(output.absolute().parent, flag="--output")
    if cam_dir is not None:
        check_writable(cam_dir, flag="--cam-dir")
    found = find_films(opts.inputs)  # before any model loads
    classifiers = [CXRClassifier.from_pretrained(ref) for ref in opts.model]
    for clf in classifiers:
        _logger.info("%s: decision = %s", clf.source, clf.decision_rule)
    if found.other_files:
        _logger.info("%d file(s) of other types in the folders left out", found.other_files)
    rows = predict_films(classifiers, found.files, opts.batch_size, opts.num_workers, cam_dir, opts.cam_method)
    outcome: Dict[str, int] = write_rows(output, rows, csv_classes(classifiers))
    print(
        f"{outcome['classified']} of {len(found.files)} file(s) classified by {len(classifiers)} model(s), "
        f"{outcome['unreadable']} could not be read (their rows say why): {output}. {DISCLAIMER}"
    )
    if not outcome["classified"]:
        raise CXRError("no file could be classified (the error column of each row says why)")
