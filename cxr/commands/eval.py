"""``python -m cxr.eval``: a checkpoint on every image of a folder or dataset
(:func:`cxr.training.evaluation.evaluate_folder`)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import List, Optional

from cxr.commands.common import add_option_flags, check_options, make_parser, parse_options, run_cli, same_flag_as
from cxr.data.labelling import Labelling
from cxr.options import option
from cxr.run_folder import check_writable
from cxr.training.config import TrainConfig

__all__ = ["EvalOptions", "build_parser", "main"]


@dataclasses.dataclass(kw_only=True)
class EvalOptions:
    """The flags of ``python -m cxr.eval`` (the data flags are :class:`TrainConfig`'s, declared once)."""

    model: str = option(help="A run's model/ folder or a Hub repository id (ORG/NAME).")
    data: str = option(
        help="Image folder in the Kaggle layout (every image is a test image), or a dataset id.", env="CXR_DATA"
    )
    dataset_revision: Optional[str] = same_flag_as(TrainConfig, "dataset_revision")
    dataset_config: Optional[str] = same_flag_as(TrainConfig, "dataset_config")
    output_dir: str = option(help="Folder for the evaluation files.", type=Path)
    batch_size: int = option(64, help="Images per forward pass and process.", minimum=1)
    num_workers: int = option(0, help="Data-loader worker processes.", minimum=0)
    cache_dir: Optional[str] = same_flag_as(TrainConfig, "cache_dir")
    skip_bad_images: bool = same_flag_as(TrainConfig, "skip_bad_images")
    label_map: List[str] = option(
        [],
        help="Map the data's class folder or label names onto the model's classes, e.g. 'Pneumonia=Viral "
        "Pneumonia' or 'No finding=Normal' (repeatable; the same meaning as train_accelerate.py's). A name that is "
        "neither one of the model's classes nor mapped is refused.",
        action="append",
        metavar="NAME=CLASS",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m cxr.eval``."""
    p = make_parser(
        "python -m cxr.eval",
        "Evaluate a cxr checkpoint on every image of a folder of class folders — all the model's classes, or any "
        "of them (external validation: a set from another hospital; --label-map for other names) — or of a dataset: metrics.json, predictions.csv, "
        "report.md and confusion_matrix.png, with every figure over the classes present and, when the films' "
        "sources are known (one sub-folder per source, or a metadata.csv with a source_repo or source column), per "
        "source. Research use only — not for diagnosis.",
    )
    add_option_flags(p, EvalOptions)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m cxr.eval``."""
    opts = parse_options(build_parser(), EvalOptions, argv)

    def run():
        check_options(opts)
        Labelling.parse(opts.label_map)  # its syntax; its classes are checked against the model's
        check_writable(Path(opts.output_dir))
        from cxr.training.evaluation import evaluate_folder  # datasets and the scorer load after the checks

        evaluate_folder(
            opts.model,
            opts.data,
            Path(opts.output_dir),
            batch_size=opts.batch_size,
            num_workers=opts.num_workers,
            cache_dir=opts.cache_dir,
            skip_bad_images=opts.skip_bad_images,
            dataset_revision=opts.dataset_revision,
            dataset_config=opts.dataset_config,
            label_map=opts.label_map,
        )

    return run_cli(run)
