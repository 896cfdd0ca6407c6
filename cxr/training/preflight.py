"""The checks of a training run that need the file system or the Hub client, run once by the entry point before
any model loads: the data flags against ``--data``, a ``--split-file`` and a ``--choose-on`` folder that exist,
an ``--output-dir`` that can be written and holds no other run, the checkpoint ``--resume`` continues, and a
well-formed ``--hub-model-id``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Union

from cxr.data.data_source import check_data_options
from cxr.errors import CXRError
from cxr.run_folder import RunFolder, check_writable
from cxr.training.config import Recipe, TrainConfig
from cxr.training.held_out import from_cv
from cxr.training.resume import checkpoint_path, resume_dir, saved_recipe

__all__ = ["preflight"]


def preflight(config: Union[TrainConfig, Recipe]) -> Recipe:
    """``config`` resolved into its :class:`~cxr.training.config.Recipe` (a resumed run's unset recipe flags from
    its saved recipe) and checked against the disk; ``resume`` becomes the checkpoint's path (``"auto"`` for a
    ``--final-fit`` pair of runs). A recipe resolves to itself (the hold-out run of ``--final-fit`` is one).

    Raises:
        CXRError: the first problem, in one sentence, before anything is written.
    """
    out = Path(config.output_dir)
    saved = saved_recipe(resume_dir(config.resume, out)) if config.resume is not None else None
    cfg = config.resolve(saved)
    if cfg.push_to_hub:
        from cxr.publishing.publish import validate_hub_model_id  # the Hub client loads only for a run that publishes

        validate_hub_model_id(cfg.hub_model_id)
    check_data_options(cfg.data, cfg.dataset_revision, cfg.dataset_config)
    if cfg.split_file is not None and not Path(cfg.split_file).is_file():
        raise CXRError(f"--split-file not found: {cfg.split_file}")
    if cfg.choose_on not in ("auto", "validation"):
        from_cv(cfg.choose_on)  # a finished cross-validation, or a sentence saying what is missing
    check_writable(out)
    if cfg.resume is not None and cfg.final_fit:
        # two runs, each resumed from its own checkpoint: the hold-out run's in holdout/, then the refit's
        if resume_dir(cfg.resume, out).resolve() != out.resolve():
            raise CXRError("--resume with --final-fit continues the run in --output-dir; give no path")
        checkpoint_path("auto", RunFolder(out).holdout.root)
        return dataclasses.replace(cfg, resume="auto")
    if cfg.resume is not None:
        return dataclasses.replace(cfg, resume=str(checkpoint_path(cfg.resume, out)))
    if not cfg.overwrite_output_dir and RunFolder(out).holds_run():
        raise CXRError(
            f"--output-dir {out} already holds a run. Pass --resume to continue it, "
            "--overwrite-output-dir to start over in it, or choose another folder."
        )
    return cfg
