"""``--final-fit``: two runs. The hold-out run, in ``holdout/``, trains on the training part alone: its kept epoch
sets the epoch count and its validation images the temperature. The refit, in ``--output-dir``, trains from the
same start on training + validation for that many epochs; test stays held out throughout."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict

from cxr.data.splits import load_split
from cxr.errors import CXRError
from cxr.run_folder import RunFolder, read_json
from cxr.training.config import Recipe
from cxr.training.loop import check_push_target_on_main, clear_earlier_run, fit, preflight
from cxr.training.resume import saved_recipe
from cxr.training.run_data import Refit

__all__ = ["final_fit"]


def final_fit(cfg: Recipe) -> Dict[str, Any]:
    """Run the hold-out run (resumed, or reused when it finished, with ``--resume``), then the refit, each with
    :func:`cxr.training.loop.fit`; returns the refit's ``metrics.json`` dict."""
    from accelerate import PartialState  # accelerate loads only when a run starts
    from accelerate.utils import parse_flag_from_env

    run = RunFolder(cfg.output_dir)
    hold = run.holdout
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if cfg.push_to_hub:  # before the hold-out run, not after it
        check_push_target_on_main(state, cfg.hub_model_id, cfg.hub_private)
    if cfg.overwrite_output_dir and cfg.resume is None:  # the refit and its hold-out run, both replaced
        clear_earlier_run(state, run)
    resume = cfg.resume is not None
    reused = resume and hold.metrics.is_file()
    if reused:
        hold_metrics = read_json(hold.metrics)
        if int(saved_recipe(hold.root)["epochs"]) != cfg.epochs:
            raise CXRError(
                f"--resume: the hold-out run in {hold.root} finished with another --epochs; start over "
                "with --overwrite-output-dir to change it"
            )
    else:
        hold_cfg = dataclasses.replace(
            cfg,
            output_dir=str(hold.root),
            final_fit=False,
            push_to_hub=False,
            hub_model_id=None,
            resume="auto" if resume else None,
        )
        hold_metrics = fit(preflight(hold_cfg), None)
    return fit(_refit_recipe(cfg, run, int(hold_metrics["kept_epoch"]), reused), _refit_of(cfg, hold_metrics, run))


def _refit_recipe(cfg: Recipe, run: RunFolder, epochs: int, reused: bool) -> Recipe:
    """The refit's recipe: the hold-out run's kept epoch count, the last epoch kept."""
    return dataclasses.replace(
        cfg,
        epochs=epochs,
        keep="last",
        warmup_epochs=min(cfg.warmup_epochs, epochs / 2),
        # a refit checkpoint counts only beside the very hold-out run it followed
        resume=str(run.checkpoint) if reused and run.checkpoint.is_file() else None,
    )


def _refit_of(cfg: Recipe, hold_metrics: Dict[str, Any], run: RunFolder) -> Refit:
    hold = run.holdout
    how: Any = read_json(hold.run_config).get("data_source", {}).get("splits") or {}
    calibration = hold_metrics.get("calibration") if cfg.calibrate else None
    return Refit(load_split(hold.split), calibration, hold.root, how)
