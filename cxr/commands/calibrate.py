"""``python -m cxr.calibrate``: a model's screening decision set again on a labelled sample of another site's films
(:func:`cxr.training.site_calibration.recalibrate`)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import List, Optional

from cxr.commands.common import add_option_flags, check_options, make_parser, parse_options, run_cli, same_flag_as
from cxr.data.labelling import Labelling
from cxr.errors import CXRError
from cxr.options import option
from cxr.run_folder import check_writable
from cxr.training.config import TrainConfig

__all__ = ["CalibrateOptions", "build_parser", "main"]


@dataclasses.dataclass(kw_only=True)
class CalibrateOptions:
    """The flags of ``python -m cxr.calibrate`` (the data and screening flags are :class:`TrainConfig`'s)."""

    model: str = option(help="A run's model/ folder or a Hub repository id (ORG/NAME).")
    data: str = option(
        help="The site's labelled films: class folders (any of the model's classes) or a dataset id. Never films the "
        "model will be judged on afterwards."
    )
    output_dir: str = option(
        help="Folder for the recalibrated model (model/), its record (site_calibration.json, .md) and the original "
        "run's records.",
        type=Path,
    )
    label_map: List[str] = option(
        [],
        help="Map the site's class folder or label names onto the model's classes, e.g. 'No finding=Normal' "
        "(repeatable). A name that is neither one of the model's classes nor mapped is refused.",
        action="append",
        metavar="NAME=CLASS",
    )
    max_missed_rate: Optional[float] = option(
        None, help="The target share of critical films called negative (default: the model's own target, else 0.01)."
    )
    guarantee: str = same_flag_as(TrainConfig, "guarantee")
    confidence: float = same_flag_as(TrainConfig, "confidence")
    temperature: str = option(
        "auto",
        help="auto: refit the temperature when the site's films allow it (two or more of the model's classes, at "
        "least 60 films; fitted on a stratified third, the point set on the rest); keep: the model's own.",
        choices=("auto", "keep"),
    )
    seed: int = option(1, help="Seed of the temperature's stratified third.")
    dataset_revision: Optional[str] = same_flag_as(TrainConfig, "dataset_revision")
    dataset_config: Optional[str] = same_flag_as(TrainConfig, "dataset_config")
    batch_size: int = option(64, help="Images per forward pass.", minimum=1)
    num_workers: int = option(0, help="Data-loader worker processes.", minimum=0)
    cache_dir: Optional[str] = same_flag_as(TrainConfig, "cache_dir")
    skip_bad_images: bool = same_flag_as(TrainConfig, "skip_bad_images")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m cxr.calibrate``."""
    p = make_parser(
        "python -m cxr.calibrate",
        "Set a trained model's screening decision (its operating point, and its temperature when the films allow) "
        "again on a labelled sample of another hospital's films, with a finite-sample guarantee computed on the "
        "site's critical films; the weights stay the model's. Research use only, not for diagnosis.",
    )
    add_option_flags(p, CalibrateOptions)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m cxr.calibrate`` (console ``cxr-calibrate``)."""
    opts = parse_options(build_parser(), CalibrateOptions, argv)

    def run():
        check_options(opts)
        Labelling.parse(opts.label_map)
        if opts.max_missed_rate is not None and not 0 < opts.max_missed_rate < 1:
            raise CXRError(
                f"--max-missed-rate must be above 0 and below 1 (e.g. 0.01 for 1%), got {opts.max_missed_rate}"
            )
        if not 0 < opts.confidence < 1:
            raise CXRError(f"--confidence must be above 0 and below 1 (e.g. 0.95), got {opts.confidence}")
        check_writable(Path(opts.output_dir))
        from cxr.training.site_calibration import recalibrate  # torch and datasets load after the checks

        done = recalibrate(
            opts.model,
            opts.data,
            Path(opts.output_dir),
            label_map=opts.label_map,
            max_missed_rate=opts.max_missed_rate,
            guarantee=opts.guarantee,
            confidence=opts.confidence,
            temperature=opts.temperature,
            seed=opts.seed,
            dataset_revision=opts.dataset_revision,
            dataset_config=opts.dataset_config,
            cache_dir=opts.cache_dir,
            skip_bad_images=opts.skip_bad_images,
            batch_size=opts.batch_size,
            num_workers=opts.num_workers,
        )
        r = done.record
        print(
            f"{opts.output_dir}/model: {r['guarantee_sentence']} At the site, {r['negative_films']} negative films, "
            f"kept negative: {'–' if r['negative_kept_rate'] is None else format(r['negative_kept_rate'], '.1%')}."
            + (f" {r['note']}." if r["note"] else "")
        )

    return run_cli(run)
