"""``python -m cxr.study``: the seed study rerun — every model trained on one split, compared and reported
(:mod:`cxr.reproduction`)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import List, Optional

from cxr.commands.common import add_option_flags, check_options, make_parser, parse_options, run_cli
from cxr.options import option
from cxr.reproduction.report import STUDY_MD
from cxr.reproduction.runner import STUDY_PRESETS, run_study

__all__ = ["StudyOptions", "build_parser", "main"]


@dataclasses.dataclass(kw_only=True)
class StudyOptions:
    """The flags of ``python -m cxr.study``."""

    data: str = option(help="Image folder in the Kaggle layout (or a dataset id).", env="CXR_DATA")
    output_dir: str = option(help="Study folder (finished runs in it are skipped).", type=Path)
    models: Optional[str] = option(
        None,
        help=lambda: (
            "Comma-separated models (default: the preset's: "
            + "; ".join(f"{k}: {','.join(v.models)}" for k, v in STUDY_PRESETS.items())
            + ")."
        ),
    )
    preset: str = option(
        "cpu-quick",
        help="paper: the study's protocol; cpu-quick: shrunk (96 px, 6 epochs) to finish on a small CPU; its time "
        "is in docs/study.md.",
        choices=lambda: tuple(STUDY_PRESETS),
    )
    clahe: bool = option(False, help="Also train every model with CLAHE before resizing.")
    num_workers: int = option(2, help="Data-loader workers per run.", minimum=0)
    cache_dir: Optional[str] = option(None, help="Folder for decoded, resized images.")
    bootstrap: int = option(1000, help="Bootstrap resamples for the 95%% intervals.", minimum=100)
    cam_images: int = option(2, help="Test images per class in the Grad-CAM figure.", minimum=1)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m cxr.study``."""
    p = make_parser(
        "python -m cxr.study",
        "Rerun the study: train every model on one split (seed 1) and write study.md/study.json with "
        "Table 1, per-class tables, bootstrap intervals, McNemar's tests, calibration and Grad-CAM figures.",
    )
    add_option_flags(p, StudyOptions)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m cxr.study``."""
    opts = parse_options(build_parser(), StudyOptions, argv)

    def run():
        from accelerate import PartialState  # accelerate loads only once the flags parse

        check_options(opts)
        models = [m.strip() for m in opts.models.split(",") if m.strip()] if opts.models else None
        out = Path(opts.output_dir)
        run_study(
            opts.data,
            out,
            models,
            opts.preset,
            opts.clahe,
            opts.num_workers,
            opts.cache_dir,
            opts.bootstrap,
            opts.cam_images,
        )
        if PartialState().is_main_process:
            print(f"wrote {out / STUDY_MD}")

    return run_cli(run)
