"""Fine-tuning with Accelerate: one code path for a laptop CPU, one GPU or N GPUs (DDP).

:func:`train` fine-tunes with the recipe of ``--preset`` (``default``: chosen by cross-validation;
``paper``: the study's) without the study's defects: a stratified 80/10/10 split (a dataset's own
train/validation/test splits are kept, only missing parts are made) whose validation images are never
augmented, the last or the best-on-validation epoch kept (``--keep``), optionally refitted on training +
validation (``--final-fit``, :mod:`cxr.training.final_fit`), a temperature fitted on validation, and every
epoch ending with an atomic checkpoint that ``--resume`` continues from.

A run is a sequence of stages, each a function of explicit values returning a frozen record: :func:`launch`
(the accelerator), :func:`prepare_data` (:class:`RunData`), :func:`build` (:class:`TrainSetup`), the epochs
(:class:`Progress`), :func:`evaluate_kept` (:class:`Results`); what each writes is named by
:mod:`cxr.training.run_files`.

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

import logging
from typing import Any, Dict, Optional

from torch import nn

from cxr.models import freeze_batchnorm_statistics
from cxr.run_folder import run_id
from cxr.training.build import TrainSetup, build
from cxr.training.config import RECIPE_KEYS, Recipe, TrainConfig
from cxr.training.end_of_training import evaluate_kept
from cxr.training.epochs import Progress, epoch_record, train_one_epoch, validate
from cxr.training.final_fit import final_fit
from cxr.training.launch import Launch, clear_earlier_run, launch
from cxr.training.preflight import preflight
from cxr.training.resume import load_resumed, restore
from cxr.training.run_data import Refit, RunData, prepare_data
from cxr.training.run_files import save_checkpoint, save_kept, write_results, write_run_config

__all__ = ["train", "fit"]

_logger = logging.getLogger(__name__)


def train(config: TrainConfig) -> Dict[str, Any]:
    """Train, keep the best-on-validation or the last epoch, evaluate it on test, and write the run folder.

    Args:
        config: the run's settings as given (resolved and checked against the disk here, by
            :func:`cxr.training.preflight.preflight`, before anything is written).

    Returns:
        The ``metrics.json`` dict: ``train`` (un-augmented training images), ``validation`` and
        ``test``, each as returned by :func:`cxr.metrics.compute_metrics` plus ``loss``; ``kept_epoch``.

    Raises:
        CXRError: bad flags or data; raised before anything is written to ``output_dir``.

    Example:
        >>> train(TrainConfig(model="tf_efficientnet_lite0", data="cxr-sample", output_dir="runs/lite0"))  # doctest: +SKIP
    """
    cfg = preflight(config)
    return final_fit(cfg, fit) if cfg.final_fit else fit(cfg)


def fit(recipe: Recipe, refit: Optional[Refit] = None) -> Dict[str, Any]:
    """One training run of a checked ``recipe`` into its ``output_dir``, stage by stage; returns ``metrics.json``."""
    run = launch(recipe)
    cfg, accelerator, folder = run.cfg, run.accelerator, run.folder  # the recipe as launched (channels_last set)
    resumed = load_resumed(cfg)
    data = prepare_data(cfg, accelerator, resumed, refit)
    setup = build(cfg, data, accelerator, run.micro_batch)
    progress = Progress() if resumed is None else restore(resumed, setup, accelerator)
    if resumed is not None:
        accelerator.print(f"resuming {cfg.model} from {cfg.resume} after epoch {progress.epochs_done}/{cfg.epochs}")
    # a run keeps the id it started with (resuming may extend --epochs, and keep a model/ saved before)
    rid = (resumed or {}).get("run_id") or run_id({k: getattr(cfg, k) for k in (*RECIPE_KEYS, "data")}, data.split)
    run_config = _begin(run, data, setup, rid, fresh=resumed is None and refit is None)
    for epoch in range(progress.epochs_done, cfg.epochs):
        progress = _epoch(run, data, setup, progress, epoch, rid)
    progress = _keep_weights_in_hand(run, setup, progress, rid)
    results = evaluate_kept(cfg, folder, data, setup, progress, rid, accelerator, refit)
    if accelerator.is_main_process:
        write_results(folder, run_config, data, setup.prep, progress, results.metrics, results.predictions, bool(refit))
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:  # not end_training(): it destroys the process group, which a caller
        tracker.finish()  # training several models in one launch (cxr.reproduction.runner) still needs
    if cfg.push_to_hub and accelerator.is_main_process:
        from cxr.publishing.publish import push_run  # the Hub client loads only for a run that publishes

        accelerator.print(f"pushed to {push_run(folder.root, cfg.hub_model_id, private=cfg.hub_private)}")
    return results.metrics


def _begin(run: Launch, data: RunData, setup: TrainSetup, rid: str, fresh: bool) -> Dict[str, Any]:
    """``--overwrite-output-dir``'s clearing (data and model loaded: nothing failed), ``split.json`` and
    ``run_config.json``, and the trackers' start; returns the ``run_config.json`` dict."""
    cfg, accelerator = run.cfg, run.accelerator
    if cfg.overwrite_output_dir and fresh:
        clear_earlier_run(accelerator, run.folder)
    run_config: Dict[str, Any] = {}
    if accelerator.is_main_process:
        run_config = write_run_config(run.folder, cfg, data, setup, rid, accelerator, run.micro_batch)
    if cfg.report_to != "none":
        flat = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("cxr", config=flat)
    return run_config


def _epoch(run: Launch, data: RunData, setup: TrainSetup, progress: Progress, epoch: int, rid: str) -> Progress:
    """Train and validate epoch ``epoch`` (0-based), save ``model/`` when ``--keep`` keeps it, and write the
    checkpoint to resume from. Shuffling and augmentation depend on (seed, epoch) only, so a resumed run repeats
    them."""
    from accelerate.utils import set_seed  # accelerate loads only when a run starts

    cfg, accelerator = run.cfg, run.accelerator
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
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        ema=setup.ema,
        ema_step=epoch * setup.steps_per_epoch,  # optimiser steps so far (resumes count on)
        channels_last=cfg.channels_last,
        clip_grad_norm=cfg.clip_grad_norm,
    )
    val = validate(setup.validated_model(), setup.loaders["validation"], accelerator)
    record = epoch_record(epoch + 1, totals, val, float(setup.scheduler.get_last_lr()[0]), seconds)
    after = progress.after(record, val, cfg.keep, cfg.epochs)
    improved = after.best is not progress.best
    accelerator.print(
        f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | "
        f"val loss {val['loss']:.4f} acc {val['accuracy']:.4f}, COVID+Viral Pn. called Normal "
        f"{record['val_critical_to_normal']}{' (best so far)' if improved else ''}"
    )
    accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=epoch + 1)
    if accelerator.is_main_process:
        if after.kept_at is not progress.kept_at:
            save_kept(run.folder, setup, cfg, rid, epoch + 1, accelerator)
        save_checkpoint(run.folder, setup, after, data, cfg, rid, accelerator)
    accelerator.wait_for_everyone()
    return after


def _keep_weights_in_hand(run: Launch, setup: TrainSetup, progress: Progress, rid: str) -> Progress:
    """``--keep last`` resumed with no epoch left to train (``--epochs`` no more than were done): keep the
    weights in hand."""
    done = progress.epochs_done
    if run.cfg.keep != "last" or progress.keeps(done):
        return progress
    if run.accelerator.is_main_process:
        save_kept(run.folder, setup, run.cfg, rid, done, run.accelerator)
    run.accelerator.wait_for_everyone()
    return Progress(progress.history, progress.best, {"epoch": done})
