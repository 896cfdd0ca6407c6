"""Resuming a run: the recipe a run folder was started with, how a recipe differs from another, where a
``--resume`` value's checkpoint is, and whether a checkpoint may be continued with the settings given now."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from cxr.errors import CXRError
from cxr.models.checkpoint import load_training_state, restore_rng_state
from cxr.run_folder import RunFolder, check_format
from cxr.training.config import RECIPE_KEYS, RESUME_LOCKED
from cxr.training.epochs import Progress

__all__ = [
    "saved_recipe",
    "recipe_differences",
    "resume_dir",
    "checkpoint_path",
    "has_checkpoint",
    "check_resumable",
    "load_resumed",
    "restore",
]


def saved_recipe(run_dir: os.PathLike) -> Dict[str, Any]:
    """The settings a run in ``run_dir`` was started with, as they were given: its ``run_config.json``
    ``config`` — for a ``--final-fit`` run its hold-out run's, with ``final_fit`` on (the refit's own
    config holds the shortened epoch count). ``{}`` where there is no run.

    Raises:
        CXRError: the run is of another format (:func:`cxr.run_folder.check_format`).
    """
    run = RunFolder(run_dir)
    own, hold = run.read_config(), run.holdout.read_config()
    if own is not None and not own.get("final_fit"):
        recorded, found = run, own
    elif hold is not None:
        recorded, found = run.holdout, {**hold, "final_fit": True, "output_dir": str(run_dir)}
    else:
        recorded, found = run, own
    if found is None:
        return {}
    check_format(recorded.format_version(), f"the run in {run_dir}")
    return found


def recipe_differences(saved: Dict[str, Any], cfg: Any, keys: Sequence[str] = RECIPE_KEYS) -> List[str]:
    """``--flag saved (now value)`` for every setting of ``keys`` in which ``saved`` (see :func:`saved_recipe`)
    differs from ``cfg``; a CV's kept folds and a resumed checkpoint are both checked with it."""
    return [
        f"--{k.replace('_', '-')} {saved.get(k, _BEFORE.get(k))!r} (now {getattr(cfg, k)!r})"
        for k in keys
        if saved.get(k, _BEFORE.get(k)) != getattr(cfg, k)
    ]


#: The value of a setting added to the recipe after a run was saved: what such a run trained with.
_BEFORE: Dict[str, Any] = {"label_map": [], "augment_on": "loader"}


def resume_dir(resume: str, output_dir: Path) -> Path:
    """The run folder a ``--resume`` value points at (the output folder, or a checkpoint's folder)."""
    if resume in ("", "auto"):
        return output_dir
    path = Path(resume)
    folder = path if path.is_dir() else path.parent
    return folder.parent if RunFolder(folder.parent).holdout.root == folder else folder


def checkpoint_path(resume: str, output_dir: Path) -> Path:
    path = Path(resume) if resume not in ("", "auto") else output_dir
    if path.is_dir():
        path = RunFolder(path).checkpoint
    if not path.is_file():
        raise CXRError(
            f"--resume: no checkpoint at {path}. A run writes {RunFolder(output_dir).checkpoint.name} into its --output-dir "
            "after each epoch; start without --resume if none finished."
        )
    return path


def has_checkpoint(output_dir: os.PathLike, final_fit: bool = False) -> bool:
    """Whether a run in ``output_dir`` left a checkpoint that ``resume="auto"`` continues from (with
    ``final_fit``, the hold-out run's counts too)."""
    run = RunFolder(output_dir)
    return run.checkpoint.is_file() or (final_fit and run.holdout.checkpoint.is_file())


def check_resumable(state: Optional[Dict[str, Any]], cfg: Any) -> None:
    """Refuse to continue a checkpoint's training ``state`` with a recipe that differs from the one it started
    with.

    Raises:
        CXRError: ``--flag saved (now value)`` for each setting that differs.
    """
    if state is None:
        return
    changed = recipe_differences(state["config"], cfg, (*RESUME_LOCKED, "augment_on"))
    if changed:
        raise CXRError("--resume: the checkpoint was trained with other settings: " + ", ".join(changed))


def load_resumed(cfg: Any) -> Optional[Dict[str, Any]]:
    """The training state ``cfg.resume`` (a checkpoint path, settled by the preflight) continues from, checked
    against ``cfg`` (:func:`check_resumable`); ``None`` for a new run."""
    if not cfg.resume:
        return None
    state = load_training_state(cfg.resume)
    check_resumable(state, cfg)
    return state


def restore(state: Dict[str, Any], setup: Any, accelerator: Any) -> Progress:
    """Load a checkpoint's weights, optimiser, schedule, RNG and weight average into ``setup`` (a
    :class:`cxr.training.build.TrainSetup`); returns the progress it had made."""
    accelerator.unwrap_model(setup.model).load_state_dict(state["model"])
    setup.optimizer.load_state_dict(state["optimizer"])
    setup.scheduler.load_state_dict(state["scheduler"])
    restore_rng_state(state["rng"])
    if setup.ema is not None and "ema" in state:
        setup.ema.module.load_state_dict(state["ema"])
    return Progress(tuple(state["history"]), state["best"], state["kept"])
