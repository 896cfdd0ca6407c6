"""``accelerate launch train_accelerate.py``: its flags are :class:`~cxr.training.config.TrainConfig`'s fields."""

from __future__ import annotations

import argparse
from typing import List, Optional

from cxr.commands.common import add_option_flags, make_parser, parse_options, run_cli
from cxr.training.config import TrainConfig
from cxr.training.loop import train

__all__ = ["build_parser", "main", "TRAIN_SECTIONS"]

#: The ``--help`` sections of ``train_accelerate.py``, in order, keyed by each field's ``group``.
TRAIN_SECTIONS = {
    "model": "model",
    "data": "data and split",
    "recipe": "training recipe (a flag not given takes --preset's value)",
    "screening": "calibration and the screening decision",
    "run folder": "run folder, resuming and tracking",
    "hardware": "processes, threads and precision",
    "hub": "publishing to the Hugging Face Hub",
}


def build_parser(prog: str = "accelerate launch train_accelerate.py") -> argparse.ArgumentParser:
    """The parser of ``train_accelerate.py``, made from :class:`~cxr.training.config.TrainConfig`'s fields."""
    p = make_parser(
        prog,
        "Fine-tune an ImageNet-pretrained timm model to classify chest X-rays into the classes of --data (the "
        "database's COVID, Lung_Opacity, Normal and Viral Pneumonia, or any of your own), on CPU, one GPU or many "
        "(Accelerate).",
    )
    add_option_flags(p, TrainConfig, sections=TRAIN_SECTIONS)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``train_accelerate.py``."""
    cfg = parse_options(build_parser(), TrainConfig, argv)

    def run():
        from accelerate import PartialState  # accelerate loads only once the flags parse

        train(cfg)
        PartialState().destroy_process_group()

    return run_cli(run)
