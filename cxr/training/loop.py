"""A training run — fine-tuning with Accelerate: one code path for a laptop CPU, one GPU or N GPUs (DDP).

:func:`train` fine-tunes with the recipe of ``--preset`` (``default``: chosen by cross-validation;
``paper``: the study's) without the study's defects: a stratified 80/10/10 split (a dataset's own
train/validation/test splits are kept, only missing parts are made) whose validation images are never
augmented, the last or the best-on-validation epoch kept (``--keep``), optionally refitted on training +
validation (``--final-fit``, :mod:`cxr.training.final_fit`), a temperature fitted on validation, and every
epoch ending with an atomic checkpoint that ``--resume`` continues from.

:func:`train` runs :func:`preflight` (the checks that need the disk or the Hub client, before anything is
written), then :func:`fit`: a sequence of stages, each a function of explicit values — :func:`launch` (the
accelerator), :func:`~cxr.training.run_data.prepare_data` (:class:`RunData`), :func:`~cxr.training.build.build`
(:class:`TrainSetup`), the epochs (:class:`Progress`), :func:`~cxr.training.finish.evaluate_kept` (the kept
model scored, calibrated and guarded); what each writes is named by :mod:`cxr.training.run_files`.

``batch_size`` is the number of images per optimiser step across all processes and
accumulation steps, so the same command optimises the same way on any
hardware; each process loads ``batch_size / (processes x accumulation steps)`` images at a time.

Example:
    >>> cfg = TrainConfig(model="logreg", data="../shared/data/cxr-sample", output_dir="runs/logreg",
    ...                   epochs=2, image_size=32)                      # doctest: +SKIP
    >>> result = train(cfg)                                              # doctest: +SKIP
    >>> sorted(result["test"])[:3]                                       # doctest: +SKIP
    ['accuracy', 'auroc', 'auroc_per_class']
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from cxr.data.data_source import check_data_options
from cxr.data.labelling import Labelling
from cxr.errors import CXRError
from cxr.models import freeze_batchnorm_statistics
from cxr.run_folder import RunFolder, check_writable, run_id
from cxr.training.build import TrainSetup, augment_generator, build
from cxr.training.config import RECIPE_KEYS, Recipe, TrainConfig
from cxr.training.epochs import Progress, epoch_record, train_one_epoch, validate
from cxr.training.finish import evaluate_kept
from cxr.training.held_out import from_cv
from cxr.training.resume import checkpoint_path, load_resumed, restore, resume_dir, saved_recipe
from cxr.training.run_data import Refit, RunData, prepare_data
from cxr.training.run_files import save_checkpoint, save_kept, write_results, write_run_config

__all__ = ["train", "fit", "preflight", "launch", "set_cpu_threads", "check_push_target_on_main", "clear_earlier_run"]

_logger = logging.getLogger(__name__)


def train(config: TrainConfig) -> Dict[str, Any]:
    """Train, keep the best-on-validation or the last epoch, evaluate it on test, and write the run folder.

    Args:
        config: the run's settings as given (resolved and checked against the disk here, by
            :func:`preflight`, before anything is written).

    Returns:
        The ``metrics.json`` dict: ``train`` (un-augmented training images), ``validation`` and
        ``test``, each as returned by :func:`cxr.metrics.compute_metrics` plus ``loss``; ``kept_epoch``.

    Raises:
        CXRError: bad flags or data; raised before anything is written to ``output_dir``.

    Example:
        >>> train(TrainConfig(model="tf_efficientnet_lite0", data="cxr-sample", output_dir="runs/lite0"))  # doctest: +SKIP
    """
    cfg = preflight(config)
    if cfg.final_fit:
        from cxr.training.final_fit import final_fit  # it runs fit() twice, with this module's checks

        return final_fit(cfg)
    return fit(cfg)


def fit(recipe: Recipe, refit: Optional[Refit] = None) -> Dict[str, Any]:
    """One training run of a checked ``recipe`` into its ``output_dir``, stage by stage; returns ``metrics.json``."""
    cfg, accelerator, micro_batch = launch(recipe)  # the recipe as launched (channels_last, augment_on set)
    folder = RunFolder(cfg.output_dir)
    resumed = load_resumed(cfg)
    data = prepare_data(cfg, accelerator, resumed, refit)
    setup = build(cfg, data, accelerator, micro_batch)
    progress = Progress() if resumed is None else restore(resumed, setup, accelerator)
    if resumed is not None:
        accelerator.print(f"resuming {cfg.model} from {cfg.resume} after epoch {progress.epochs_done}/{cfg.epochs}")
    # a run keeps the id it started with (resuming may extend --epochs, and keep a model/ saved before)
    rid = resumed["run_id"] if resumed else run_id({k: getattr(cfg, k) for k in (*RECIPE_KEYS, "data")}, data.split)
    fresh = resumed is None and refit is None
    run_config = _begin(cfg, accelerator, folder, data, setup, rid, micro_batch, fresh)
    for epoch in range(progress.epochs_done, cfg.epochs):
        progress = _epoch(cfg, accelerator, folder, data, setup, progress, epoch, rid)
    progress = _keep_weights_in_hand(cfg, accelerator, folder, setup, progress, rid, data)
    metrics, predictions = evaluate_kept(cfg, folder, data, setup, progress, rid, accelerator, refit)
    if accelerator.is_main_process:
        write_results(folder, run_config, data, setup.prep, progress, metrics, predictions, bool(refit))
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:  # not end_training(): it destroys the process group, which a caller
        tracker.finish()  # training several models in one launch (cxr.reproduction.runner) still needs
    if cfg.push_to_hub and accelerator.is_main_process:
        from cxr.publishing.publish import push_run  # the Hub client loads only for a run that publishes

        accelerator.print(f"pushed to {push_run(folder.root, cfg.hub_model_id, private=cfg.hub_private)}")
    return metrics


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
    Labelling.parse(cfg.label_map)  # its syntax; the classes it makes are checked once the data is listed
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


def launch(cfg: Recipe) -> Tuple[Recipe, Any, int]:
    """Start the accelerator for a resolved ``cfg``; writes nothing. Returns where the run trains: its recipe with
    ``channels_last`` and ``augment_on`` settled for the device, the accelerator, and the images each process loads per micro-step.

    Raises:
        CXRError: ``--batch-size`` does not split over processes x accumulation steps; the push target is refused.
    """
    from accelerate import Accelerator, DataLoaderConfiguration  # accelerate loads only when a run starts

    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_dir=str(cfg.output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    if accelerator.device.type == "cpu":
        set_cpu_threads(cfg.cpu_threads, accelerator.num_processes)
    if cfg.channels_last is None:  # measured: faster on CPU, several times slower for EfficientNet-Lite0 on CUDA
        cfg = dataclasses.replace(cfg, channels_last=accelerator.device.type == "cpu")
    if cfg.augment_on == "auto":  # on a CPU the loader's workers augment beside the training process
        cfg = dataclasses.replace(cfg, augment_on="loader" if accelerator.device.type == "cpu" else "device")
    world = accelerator.num_processes * cfg.gradient_accumulation_steps
    if cfg.batch_size % world:
        raise CXRError(
            f"--batch-size {cfg.batch_size} must be divisible by processes x accumulation steps "
            f"({accelerator.num_processes} x {cfg.gradient_accumulation_steps})"
        )
    if cfg.push_to_hub:
        check_push_target_on_main(accelerator, cfg.hub_model_id, cfg.hub_private)
    return cfg, accelerator, cfg.batch_size // world


def _begin(
    cfg: Recipe,
    accelerator: Any,
    folder: RunFolder,
    data: RunData,
    setup: TrainSetup,
    rid: str,
    micro_batch: int,
    fresh: bool,
) -> Dict[str, Any]:
    """``--overwrite-output-dir``'s clearing (data and model loaded: nothing failed), ``split.json`` and
    ``run_config.json``, and the trackers' start; returns the ``run_config.json`` dict."""
    if cfg.overwrite_output_dir and fresh:
        clear_earlier_run(accelerator, folder)
    run_config: Dict[str, Any] = {}
    if accelerator.is_main_process:
        run_config = write_run_config(folder, cfg, data, setup, rid, accelerator, micro_batch)
    if cfg.report_to != "none":
        flat = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("cxr", config=flat)
    return run_config


def _epoch(
    cfg: Recipe,
    accelerator: Any,
    folder: RunFolder,
    data: RunData,
    setup: TrainSetup,
    progress: Progress,
    epoch: int,
    rid: str,
) -> Progress:
    """Train and validate epoch ``epoch`` (0-based), save ``model/`` when ``--keep`` keeps it, and write the
    checkpoint to resume from. Shuffling and augmentation depend on (seed, epoch) only, so a resumed run repeats
    them."""
    from accelerate.utils import set_seed  # accelerate loads only when a run starts

    set_seed(cfg.seed + epoch, device_specific=True)
    loader = setup.loaders["train"]
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    setup.model.train()
    freeze_batchnorm_statistics(setup.model, all_layers=cfg.freeze_bn_stats)
    totals, seconds = train_one_epoch(
        setup.model,
        loader,
        nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        setup.optimizer,
        setup.scheduler,
        accelerator,
        setup.train_input,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        ema=setup.ema,
        ema_step=epoch * setup.steps_per_epoch,  # optimiser steps so far (resumes count on)
        clip_grad_norm=cfg.clip_grad_norm,
        generator=augment_generator(setup.generator, cfg.seed, epoch, accelerator.process_index),
    )
    val = validate(setup.validated_model(), setup.loaders["validation"], accelerator, data.classes, setup.eval_input)
    record = epoch_record(epoch + 1, totals, val, float(setup.scheduler.get_last_lr()[0]), seconds)
    after = progress.after(record, val, cfg.keep, cfg.epochs)
    improved = after.best is not progress.best
    accelerator.print(
        f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | "
        f"val loss {val['loss']:.4f} acc {val['accuracy']:.4f}"
        + (
            f", {data.classes.critical_label} called {data.classes.negative} {record['val_critical_to_normal']}"
            if data.classes.negative
            else ""
        )
        + (" (best so far)" if improved else "")
    )
    accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=epoch + 1)
    if accelerator.is_main_process:
        if after.kept_at is not progress.kept_at:
            save_kept(folder, setup, cfg, rid, epoch + 1, accelerator, data.classes)
        save_checkpoint(folder, setup, after, data, cfg, rid, accelerator)
    accelerator.wait_for_everyone()
    return after


def _keep_weights_in_hand(
    cfg: Recipe, accelerator: Any, folder: RunFolder, setup: TrainSetup, progress: Progress, rid: str, data: RunData
) -> Progress:
    """``--keep last`` resumed with no epoch left to train (``--epochs`` no more than were done): keep the
    weights in hand."""
    done = progress.epochs_done
    if cfg.keep != "last" or progress.keeps(done):
        return progress
    if accelerator.is_main_process:
        save_kept(folder, setup, cfg, rid, done, accelerator, data.classes)
    accelerator.wait_for_everyone()
    return Progress(progress.history, progress.best, {"epoch": done})


def set_cpu_threads(requested: Optional[int], num_processes: int) -> int:
    """Give torch ``requested`` threads; else ``OMP_NUM_THREADS`` where it is set above 1; else the usable cores
    shared among this machine's training processes — ``accelerate launch`` without a CPU config sets
    ``OMP_NUM_THREADS=1``, which would leave all but one core idle."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if requested is None and env.isdigit() and int(env) > 1:
        requested = int(env)
    if requested is None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        requested = max(1, cores // max(local, 1))
    torch.set_num_threads(requested)
    return requested


def check_push_target_on_main(state: Any, repo_id: Optional[str], private: bool) -> None:
    """Check token and repository on the main process before training; every process stops if it fails."""
    from accelerate.utils import broadcast_object_list  # accelerate loads only when a run starts

    from cxr.publishing.publish import check_push_target  # the Hub client loads only for a run that publishes

    message: List[Optional[str]] = [None]
    if state.is_main_process:
        try:
            check_push_target(repo_id, private=private)
        except CXRError as e:
            message[0] = str(e)
    if state.num_processes > 1:
        broadcast_object_list(message)
    if message[0]:
        raise CXRError(message[0])


def clear_earlier_run(state: Any, folder: RunFolder) -> None:
    """``--overwrite-output-dir``: the earlier run's files go before this run writes any (main process)."""
    if state.is_main_process and folder.files():
        removed = folder.clear()
        _logger.warning("--overwrite-output-dir: removed the earlier run's %s", ", ".join(p.name for p in removed))
    state.wait_for_everyone()
