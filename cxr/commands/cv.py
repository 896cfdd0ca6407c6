"""``python -m cxr.cv``: every training flag of ``train_accelerate.py`` (the recipe of each fold), plus
``--folds`` and ``--bootstrap`` (:mod:`cxr.training.cv`)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import List, Optional

from cxr.commands.common import add_option_flags, check_options, parse_options, run_cli
from cxr.commands.train import build_parser as build_train_parser
from cxr.options import option
from cxr.run_folder import CVFolder
from cxr.training.config import TrainConfig
from cxr.training.cv import refuse_per_run_flags, run_cv
from cxr.training.loop import preflight

__all__ = ["CVOptions", "build_parser", "main"]


@dataclasses.dataclass(kw_only=True)
class CVOptions:
    """The flags of ``python -m cxr.cv`` that are not a fold's recipe."""

    folds: int = option(5, help="Number of stratified folds (2 to the smallest class's size).", group="cv", minimum=2)
    bootstrap: int = option(1000, help="Bootstrap resamples for the 95%% intervals.", group="cv", minimum=100)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m cxr.cv``: ``train_accelerate.py``'s, with a cross-validation section."""
    p = build_train_parser("python -m cxr.cv")
    p.description = (
        "Cross-validate a training recipe: one model per stratified fold, every image scored once out of "
        "fold; accuracy, COVID recall, images called Normal, macro AUROC and ECE with bootstrap 95% "
        "intervals, and a per-fold table. --output-dir is the CV folder; every other flag is the recipe "
        "of each fold. A rerun resumes (finished folds are kept)."
    )
    add_option_flags(p, CVOptions, sections={"cv": "cross-validation"})
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m cxr.cv``."""
    parser = build_parser()
    opts, cfg = parse_options(parser, CVOptions, argv), parse_options(parser, TrainConfig, argv)

    def run():
        from accelerate import PartialState  # accelerate loads only once the flags parse

        check_options(opts)
        refuse_per_run_flags(cfg)
        # checked as a training run's folder would be (a run folder is refused); each fold's run replaces its own
        result = run_cv(dataclasses.replace(preflight(cfg), overwrite_output_dir=True), opts.folds, opts.bootstrap)
        state = PartialState()
        if state.is_main_process and result:
            oof = result["out_of_fold"]
            print(
                f"out of fold ({result['images']} images): accuracy {100 * oof['accuracy']['value']:.1f}% "
                f"[{100 * oof['accuracy']['low']:.1f}, {100 * oof['accuracy']['high']:.1f}]; wrote "
                f"{CVFolder(cfg.output_dir).report}"
            )
        state.destroy_process_group()

    return run_cli(run)
