"""Fine-tuning with Accelerate: one code path for a laptop CPU, one GPU or N GPUs (DDP).

:func:`train` fine-tunes with the recipe of ``--preset`` (``default``: chosen by cross-validation;
``paper``: the study's) without the study's defects: a stratified 80/10/10 split (a dataset's own
train/validation/test splits are kept, only missing parts are made) whose validation images are never
augmented, the last or the best-on-validation epoch kept (``--keep``), optionally refitted on training +
validation (``--final-fit``), a temperature fitted on validation, and every epoch ending with an atomic
checkpoint that ``--resume`` continues from.

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
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cxr.data.dataset import RadiographDataset, cache_pixels, load_data_source
from cxr.data.preprocessing import PreprocessConfig, TrainAugmentation
from cxr.data.splits import DEFAULT_FRACTIONS, SPLITS, complete_split, indices_for_split, load_split, save_split
from cxr.errors import CXRError
from cxr.labels import CLASS_NAMES, DISCLAIMER
from cxr.metrics import compute_metrics, critical_to_normal, selection_key
from cxr.metrics.operating_point import decision_metrics
from cxr.metrics.stats import (
    negative_log_likelihood,
)
from cxr.models import (
    apply_train_layers,
    create_model,
    freeze_batchnorm_statistics,
)
from cxr.models.checkpoint import (
    capture_rng_state,
    load_training_state,
    recover_model_dir,
    restore_rng_state,
    save_model_dir,
    save_training_state,
    set_model_operating_point,
    set_model_temperature,
)
from cxr.reporting.run_report import (
    calibration_description,
    kept_description,
    plot_training_curves,
    recipe_summary,
)
from cxr.run_folder import MODEL_OOD_NAME, RunFolder, read_json, run_id, write_json, write_predictions
from cxr.training.config import (
    _LEGACY_RECIPE,
    _RESUME_LOCKED,
    RECIPE_KEYS,
    TrainConfig,
    recipe_differences,
    saved_recipe,
)
from cxr.training.evaluation import Outputs, predict, predict_outputs, softmax, write_evaluation
from cxr.training.finish import GuardInputs, finish
from cxr.training.held_out import HeldOut, bundled_for, from_cv, from_logits, from_predictions

__all__ = ["train", "make_loader", "train_step", "lr_factor"]

_logger = logging.getLogger(__name__)

#: A cross-entropy above this (logits a thousand apart on the wrong class) means the run has diverged.
DIVERGED_LOSS = 1e3


def _set_cpu_threads(requested: Optional[int], num_processes: int) -> int:
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


def _make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser of ``model``'s trainable parameters; with ``layer_decay`` below 1, one parameter group per
    layer (timm's grouping), each layer's learning rate ``layer_decay`` times the next one's, the head's ``lr``,
    and no weight decay on biases and norm parameters."""
    params: Any = [p for p in model.parameters() if p.requires_grad]
    if cfg.layer_decay < 1:
        from timm.optim import param_groups_layer_decay

        params = param_groups_layer_decay(model, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
        for group in params:
            group["lr"] = cfg.lr * group["lr_scale"]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """The learning-rate multiplier at optimiser step ``step``: linear warm-up over ``warmup_steps`` (from
    1/``warmup_steps``), then constant or a cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _make_scheduler(cfg: TrainConfig, optimizer, total_steps: int, steps_per_epoch: int):
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, cfg.lr_scheduler)
    )


def _collate(batch):
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}


def make_loader(
    pix,
    prep: PreprocessConfig,
    rows: List[int],
    micro_batch: int,
    augment: bool,
    num_workers: int,
    augmentation: str = "study",
) -> torch.utils.data.DataLoader:
    """The loader a run uses for one part: cached pixels, [augmentation,] the checkpoint's normalisation."""
    view = RadiographDataset(pix, prep, rows, TrainAugmentation.named(augmentation) if augment else None)
    return torch.utils.data.DataLoader(
        view,
        batch_size=micro_batch,
        shuffle=augment,
        num_workers=num_workers,
        collate_fn=_collate,
        # workers start afresh each epoch, seeded from the (seed, epoch) state set before it, so a resumed run
        # augments exactly as an uninterrupted one (persistent workers would carry their RNG across epochs)
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


def train_step(
    model,
    batch,
    loss_fn,
    optimizer,
    scheduler,
    accelerator,
    channels_last: bool = False,
    clip_grad_norm: Optional[float] = None,
):
    """One optimisation (micro-)step under Accelerate: forward, backward, [clip,] step, zero the gradients.

    Returns:
        ``(loss, logits)`` of the micro-batch.

    Raises:
        CXRError: the loss is not finite (the run diverged; nothing of this epoch is kept).
    """
    x = batch["pixel_values"]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with accelerator.accumulate(model):
        with accelerator.autocast():
            logits = model(x)
            loss = loss_fn(logits.float(), batch["labels"])
        if not torch.isfinite(loss) or loss.item() > DIVERGED_LOSS:
            raise CXRError(
                f"the training loss became {loss.item():.4g} (diverged): lower --lr, add --clip-grad-norm or "
                "--warmup-epochs; no model is kept from this epoch on"
            )
        accelerator.backward(loss)
        if clip_grad_norm is not None and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        if accelerator.sync_gradients:
            scheduler.step()
        optimizer.zero_grad()
    return loss, logits


def _split_metrics(labels: np.ndarray, probs: np.ndarray) -> Dict[str, Any]:
    m = compute_metrics(labels, probs)
    m["loss"] = negative_log_likelihood(labels, probs)
    return m


def _versions() -> Dict[str, str]:
    import accelerate
    import datasets
    import timm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
    }


@dataclasses.dataclass
class _Refit:
    """What ``--final-fit``'s second run takes from its hold-out run: its split (the refit trains on its
    training and validation parts) and its calibration, fitted on validation while it was held out."""

    split: Dict[str, List[str]]
    calibration: Optional[Dict[str, Any]]  # the hold-out run's (None: --no-calibrate)
    holdout: Path
    how: Dict[str, str]  # how the hold-out run's split was made, part by part


def train(config: TrainConfig) -> Dict[str, Any]:
    """Train, keep the best-on-validation or the last epoch, evaluate it on test, and write the run folder.

    With ``final_fit``, two runs: one in ``holdout/`` on the training part alone (its kept epoch sets the
    epoch count, its validation images the temperature), then the model that is kept, trained from the
    same start on training + validation for that many epochs; test stays held out throughout.

    Args:
        config: the run's settings (checked by :meth:`TrainConfig.resolve` first).

    Returns:
        The ``metrics.json`` dict: ``train`` (un-augmented training images), ``validation`` and
        ``test``, each as returned by :func:`cxr.metrics.compute_metrics` plus ``loss``; ``kept_epoch``.

    Raises:
        CXRError: bad flags or data; raised before anything is written to ``output_dir``.

    Example:
        >>> train(TrainConfig(model="tf_efficientnet_lite0", data="cxr-sample", output_dir="runs/lite0"))  # doctest: +SKIP
    """
    cfg = config.resolve()
    return _final_fit(cfg) if cfg.final_fit else _fit(cfg)


def _final_fit(cfg: TrainConfig) -> Dict[str, Any]:
    """``--final-fit``: the hold-out run (resumed or reused when ``--resume``), then the refit in ``output_dir``."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    run = RunFolder(cfg.output_dir)
    hold = run.holdout
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if cfg.push_to_hub:  # before the hold-out run, not after it
        _check_push_target_on_main(state, cfg)
    if cfg.overwrite_output_dir and cfg.resume is None:  # the refit and its hold-out run, both replaced
        _clear_earlier_run(state, run)
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
        hold_metrics = _fit(
            dataclasses.replace(
                cfg,
                output_dir=str(hold.root),
                final_fit=False,
                push_to_hub=False,
                hub_model_id=None,
                resume="auto" if resume else None,
            ).resolve()
        )
    calibration = hold_metrics.get("calibration") if cfg.calibrate else None
    epochs = int(hold_metrics["kept_epoch"])
    refit_cfg = dataclasses.replace(
        cfg,
        epochs=epochs,
        keep="last",
        warmup_epochs=min(cfg.warmup_epochs, epochs / 2),
        # a refit checkpoint counts only beside the very hold-out run it followed
        resume=str(run.checkpoint) if reused and run.checkpoint.is_file() else None,
    )
    hold_run = read_json(hold.run_config)
    return _fit(
        refit_cfg,
        _Refit(load_split(hold.split), calibration, hold.root, hold_run.get("data_source", {}).get("splits") or {}),
    )


@dataclasses.dataclass
class _Run:
    """What the steps of one training run share (:func:`_fit`): set by :func:`_start`, :func:`_load_data`,
    :func:`_build_model` and updated by every epoch."""

    cfg: TrainConfig
    folder: RunFolder
    accelerator: Any
    micro_batch: int
    resumed: Optional[Dict[str, Any]]  # the training state resumed from
    refit: Optional[_Refit]
    # the data (_load_data)
    pix: Any = None
    file_names: Sequence[str] = ()
    split: Dict[str, List[str]] = dataclasses.field(default_factory=dict)
    rows: Dict[str, List[int]] = dataclasses.field(default_factory=dict)
    data_source: Dict[str, Any] = dataclasses.field(default_factory=dict)
    given_splits: bool = False
    skipped: List[str] = dataclasses.field(default_factory=list)
    # the model and its optimisation (_build_model)
    model: Any = None
    prep: Optional[PreprocessConfig] = None
    run_info: Dict[str, Any] = dataclasses.field(default_factory=dict)
    loaders: Dict[str, Any] = dataclasses.field(default_factory=dict)
    optimizer: Any = None
    scheduler: Any = None
    steps_per_epoch: int = 0
    ema: Any = None
    # progress
    history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    best: Optional[Dict[str, Any]] = None  # the best epoch on validation
    kept_at: Optional[Dict[str, Any]] = None  # the epoch whose model is in model/ (cfg.keep)
    start_epoch: int = 0

    @property
    def kept_model(self) -> nn.Module:
        """The model validated and kept: the weight average with ``--ema-decay``, else the trained weights."""
        return self.accelerator.unwrap_model(self.model) if self.ema is None else self.ema.module


def _fit(cfg: TrainConfig, refit: Optional[_Refit] = None) -> Dict[str, Any]:
    """One training run of a resolved ``cfg`` into ``cfg.output_dir`` (see :func:`train`): set up, load the
    data, build the model, train epoch by epoch (validating, keeping and checkpointing each), then evaluate
    the kept model, calibrate it and write the run folder."""
    r = _start(cfg, refit)
    _load_data(r)
    _build_model(r)
    _write_run_config(r)
    for epoch in range(r.start_epoch, r.cfg.epochs):
        totals, seconds = _train_epoch(r, epoch)
        _validate_and_keep(r, epoch, totals, seconds)
    _keep_weights_in_hand(r)
    metrics, predictions = _evaluate_kept(r)
    if r.accelerator.is_main_process:
        _write_results(r, metrics, predictions)
    r.accelerator.wait_for_everyone()
    for tracker in r.accelerator.trackers:  # not end_training(): it destroys the process group, which a caller
        tracker.finish()  # training several models in one launch (cxr.study.runner) still needs
    if r.cfg.push_to_hub and r.accelerator.is_main_process:
        from cxr.hub.publish import push_run

        r.accelerator.print(f"pushed to {push_run(r.folder.root, r.cfg.hub_model_id, private=r.cfg.hub_private)}")
    return metrics


def _start(cfg: TrainConfig, refit: Optional[_Refit]) -> _Run:
    """The accelerator and the process's threads; the batch split over processes; the push target and a
    resumed checkpoint's settings checked before any work."""
    from accelerate import Accelerator, DataLoaderConfiguration

    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_dir=str(cfg.output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    if accelerator.device.type == "cpu":
        _set_cpu_threads(cfg.cpu_threads, accelerator.num_processes)
    if cfg.channels_last is None:  # measured: faster on CPU, several times slower for EfficientNet-Lite0 on CUDA
        cfg = dataclasses.replace(cfg, channels_last=accelerator.device.type == "cpu")
    world = accelerator.num_processes * cfg.gradient_accumulation_steps
    if cfg.batch_size % world:
        raise CXRError(
            f"--batch-size {cfg.batch_size} must be divisible by processes x accumulation steps "
            f"({accelerator.num_processes} x {cfg.gradient_accumulation_steps})"
        )
    if cfg.push_to_hub:
        _check_push_target_on_main(accelerator, cfg)
    state = load_training_state(cfg.resume) if cfg.resume else None
    if state is not None:
        defaults = {**{f.name: f.default for f in dataclasses.fields(TrainConfig)}, **_LEGACY_RECIPE}
        changed = recipe_differences({**defaults, **state["config"]}, cfg, _RESUME_LOCKED)
        if changed:
            raise CXRError("--resume: the checkpoint was trained with other settings: " + ", ".join(changed))
    return _Run(cfg, RunFolder(cfg.output_dir), accelerator, cfg.batch_size // world, state, refit)


def _clear_earlier_run(state, folder: RunFolder) -> None:
    """``--overwrite-output-dir``: the earlier run's files go before this run writes any (main process)."""
    if state.is_main_process and folder.files():
        removed = folder.clear()
        _logger.warning("--overwrite-output-dir: removed the earlier run's %s", ", ".join(p.name for p in removed))
    state.wait_for_everyone()


def _load_data(r: _Run) -> None:
    """Decode and resize once (main process first, the others then read its cache), and settle the split:
    a resumed run's, the hold-out run's for a refit, a ``--split-file``, or a new stratified one. A resumed run
    reads a Hub dataset at the commit it started from unless ``--dataset-revision`` says otherwise."""
    cfg, state, refit = r.cfg, r.resumed, r.refit
    prior_source = (state or {}).get("data_source") or {}
    revision = cfg.dataset_revision
    if revision is None and prior_source.get("kind") == "hub" and prior_source.get("id") == cfg.data:
        revision = prior_source.get("revision")
    with r.accelerator.main_process_first():
        source = load_data_source(cfg.data, revision, cfg.dataset_config)
        cached = cache_pixels(
            source.dataset,
            cfg.image_size,
            cache_dir=cfg.cache_dir,
            skip_bad_images=cfg.skip_bad_images,
            clahe=cfg.clahe,
        )
    r.pix, r.given_splits, r.skipped = cached.dataset, bool(source.given_splits), [n for n, _ in cached.bad]
    r.file_names = r.pix["file_name"]
    if state is not None:  # a resumed run keeps the split it started with, whatever the data or flags say now
        split = state["split"]
        how = prior_source.get("splits") or {part: f"from the checkpoint {cfg.resume}" for part in SPLITS}
    elif refit is not None:  # the hold-out split, saved as it is; training also takes validation
        split, how = refit.split, dict(refit.how)
        how = {part: how.get(part, f"as in {refit.holdout.name}/{r.folder.split.name}") for part in SPLITS}
        how["train"] += "; with the validation images added (--final-fit)"
        how["validation"] += "; trained on here (--final-fit), so not held out"
    elif cfg.split_file:
        split = load_split(cfg.split_file)
        how = {part: f"from --split-file {cfg.split_file}" for part in SPLITS}
    else:
        split, how = complete_split(r.file_names, r.pix["label"], source.given_splits, seed=cfg.seed)
    r.split, r.rows = split, indices_for_split(r.file_names, split)
    if refit is not None:
        r.rows["train"] = sorted(r.rows["train"] + r.rows["validation"])
    r.data_source = {**source.info, "images": len(r.pix), "splits": how}
    r.accelerator.print(f"data: {_describe_data(r.data_source)}")
    for part in SPLITS:
        r.accelerator.print(f"  {part}: {len(r.rows[part])} images, {how[part]}")


def _build_model(r: _Run) -> None:
    """The model with its preprocessing (the one source of truth saved with the checkpoint), the loaders,
    optimiser and schedule, all prepared by Accelerate; a resumed run's state restored; the EMA if asked."""
    from accelerate.utils import set_seed

    cfg, accelerator = r.cfg, r.accelerator
    set_seed(cfg.seed)
    model, pretrained_source = create_model(
        cfg.model, len(CLASS_NAMES), cfg.pretrained, cfg.image_size, drop_path=cfg.drop_path
    )
    trainable = apply_train_layers(model, cfg.model, cfg.train_layers)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    pcfg = model.pretrained_cfg
    r.prep = PreprocessConfig.create(
        cfg.image_size,
        in_chans=pcfg["input_size"][0],
        norm=cfg.norm,
        model_mean=pcfg.get("mean"),
        model_std=pcfg.get("std"),
        clahe=cfg.clahe,
    )
    r.run_info = {
        "model": cfg.model,
        "pretrained": pretrained_source,
        "train_layers": cfg.train_layers,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "parameters": sum(p.numel() for p in model.parameters()),
        "preprocessing": r.prep.to_dict(),
        "first_trainable_parameter": trainable[0],
    }
    names = ("train", "train_eval", "validation", "test")
    loaders = [
        make_loader(r.pix, r.prep, r.rows[n.split("_")[0]], r.micro_batch, n == "train", cfg.num_workers, cfg.augment)
        for n in names
    ]
    optimizer = _make_optimizer(cfg, model)
    r.steps_per_epoch = math.ceil(len(loaders[0]) / cfg.gradient_accumulation_steps)
    scheduler = _make_scheduler(cfg, optimizer, r.steps_per_epoch * cfg.epochs, r.steps_per_epoch)
    r.model, r.optimizer, *loaders, r.scheduler = accelerator.prepare(model, optimizer, *loaders, scheduler)
    r.loaders = dict(zip(names, loaders))
    state = r.resumed
    if state is not None:
        accelerator.unwrap_model(r.model).load_state_dict(state["model"])
        r.optimizer.load_state_dict(state["optimizer"])
        r.scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        r.start_epoch, r.history, r.best = state["epoch"], list(state["history"]), state["best"]
        r.kept_at = state.get("kept", r.best)
        accelerator.print(f"resuming {cfg.model} from {cfg.resume} after epoch {r.start_epoch}/{cfg.epochs}")
    if cfg.ema_decay is not None:  # evaluated and kept instead of the raw weights
        from timm.utils import ModelEmaV3

        # the decay ramps up from 0 (timm's warm-up), so the average does not drag the randomly initialised head along
        r.ema = ModelEmaV3(
            accelerator.unwrap_model(r.model), decay=cfg.ema_decay, use_warmup=True, device=accelerator.device
        )
        if state is not None and "ema" in state:
            r.ema.module.load_state_dict(state["ema"])


def _write_run_config(r: _Run) -> None:
    """The run folder's ``split.json`` and ``run_config.json`` (main process), and the trackers' start."""
    cfg, accelerator = r.cfg, r.accelerator
    if cfg.overwrite_output_dir and cfg.resume is None and r.refit is None:  # data and model loaded: nothing failed
        _clear_earlier_run(accelerator, r.folder)
    # a run keeps the id it started with (resuming may extend --epochs, and keep a model/ saved before)
    settings = cfg.to_dict()
    new_id = run_id({k: settings[k] for k in (*RECIPE_KEYS, "data")}, r.split)
    r.run_info["run_id"] = (r.resumed or {}).get("run_id") or new_id
    if accelerator.is_main_process:
        r.folder.root.mkdir(parents=True, exist_ok=True)
        if recover_model_dir(r.folder.model_dir):
            _logger.warning("restored %s from a save interrupted by the last run's end", r.folder.model_dir)
        # the shares actually used, where the data's own splits set them (not the 80/10/10 asked for)
        total = sum(map(len, r.rows.values()))
        fractions = tuple(round(len(r.rows[p]) / total, 4) for p in SPLITS) if r.given_splits else DEFAULT_FRACTIONS
        save_split(r.folder.split, r.split, cfg.seed, fractions)
        write_json(
            r.folder.run_config,
            {
                "config": cfg.to_dict(),
                **r.run_info,
                "micro_batch_per_process": r.micro_batch,
                "num_processes": accelerator.num_processes,
                "device": str(accelerator.device),
                "torch_threads": torch.get_num_threads(),
                "mixed_precision": accelerator.mixed_precision,
                "images": {part: len(r.rows[part]) for part in SPLITS},
                "data_source": r.data_source,
                "skipped_unreadable_images": r.skipped,
                "versions": _versions(),
            },
        )
    if cfg.report_to != "none":
        flat = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("cxr", config=flat)


def _train_epoch(r: _Run, epoch: int) -> Tuple[torch.Tensor, float]:
    """One pass over the training images; returns the summed (loss, correct, count) over every process and
    the seconds it took. Shuffling and augmentation depend on (seed, epoch) only, so a resumed run repeats them."""
    from accelerate.utils import set_seed

    cfg, accelerator, model = r.cfg, r.accelerator, r.model
    set_seed(cfg.seed + epoch, device_specific=True)
    loader = r.loaders["train"]
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    model.train()
    freeze_batchnorm_statistics(model, all_layers=cfg.freeze_bn_stats)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    t0 = time.time()
    totals = torch.zeros(3, device=accelerator.device)  # loss sum, correct, count
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not accelerator.is_local_main_process)
    ema_step = epoch * r.steps_per_epoch  # optimiser steps so far (resumes count on)
    for batch in bar:
        loss, logits = train_step(
            model, batch, loss_fn, r.optimizer, r.scheduler, accelerator, cfg.channels_last, cfg.clip_grad_norm
        )
        if r.ema is not None and accelerator.sync_gradients:
            ema_step += 1
            r.ema.update(accelerator.unwrap_model(model), step=ema_step)
        n = batch["labels"].numel()
        correct = (logits.argmax(-1) == batch["labels"]).sum().float()
        totals += torch.stack([loss.detach().float() * n, correct, torch.tensor(float(n), device=accelerator.device)])
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return accelerator.reduce(totals, reduction="sum"), time.time() - t0


def _validate_and_keep(r: _Run, epoch: int, totals: torch.Tensor, seconds: float) -> None:
    """Validate the epoch's model, record it, save it to ``model/`` when ``--keep`` says so, and write the
    checkpoint to resume from."""
    cfg, accelerator = r.cfg, r.accelerator
    model = r.model if r.ema is None else r.ema.module
    _, val_labels, val_probs = predict(model, r.loaders["validation"], accelerator, desc="validation")
    val = _split_metrics(val_labels, val_probs)
    record = {
        "epoch": epoch + 1,
        "train_loss": float(totals[0] / totals[2]),
        "train_accuracy": float(totals[1] / totals[2]),
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "val_critical_to_normal": critical_to_normal(val),
        "lr": float(r.scheduler.get_last_lr()[0]),
        "seconds": round(seconds, 2),
    }
    r.history.append(record)
    improved = r.best is None or selection_key(val) > tuple(r.best["key"])
    if improved:
        r.best = {"epoch": epoch + 1, "key": list(selection_key(val)), "validation": val}
    keep_now = improved if cfg.keep == "best" else epoch + 1 == cfg.epochs
    if keep_now:
        r.kept_at = {"epoch": epoch + 1, "validation": val}
    accelerator.print(
        f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | "
        f"val loss {val['loss']:.4f} acc {val['accuracy']:.4f}, COVID+Viral Pn. called Normal "
        f"{record['val_critical_to_normal']}{' (best so far)' if improved else ''}"
    )
    accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=epoch + 1)
    if accelerator.is_main_process:
        if keep_now:
            _save_kept(r, epoch + 1)
        state = {
            "model": accelerator.unwrap_model(r.model).state_dict(),
            "optimizer": r.optimizer.state_dict(),
            "scheduler": r.scheduler.state_dict(),
            "rng": capture_rng_state(),
            "epoch": epoch + 1,
            "history": r.history,
            "best": r.best,
            "kept": r.kept_at,
            "split": r.split,
            "data_source": r.data_source,
            "config": cfg.to_dict(),
            "run_id": r.run_info["run_id"],
        }
        save_training_state(r.folder.checkpoint, {**state, **({"ema": r.ema.module.state_dict()} if r.ema else {})})
    accelerator.wait_for_everyone()


def _save_kept(r: _Run, epoch: int) -> None:
    """Save the kept model of ``epoch`` to ``model/`` with its preprocessing (main process)."""
    info = {**_model_info(r.run_info, r.cfg), "epoch": epoch, "ema": r.ema is not None}
    save_model_dir(r.kept_model, r.folder.model_dir, r.prep, info)


def _keep_weights_in_hand(r: _Run) -> None:
    """``--keep last`` resumed with no epoch left to train (``--epochs`` no more than were done): keep the
    weights in hand."""
    if r.cfg.keep == "last" and (r.kept_at is None or r.kept_at["epoch"] != len(r.history)):
        r.kept_at = {"epoch": len(r.history)}
        if r.accelerator.is_main_process:
            _save_kept(r, len(r.history))
        r.accelerator.wait_for_everyone()


def _evaluate_kept(r: _Run) -> Tuple[Dict[str, Any], Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """The kept model on training (un-augmented), validation and test; one temperature fitted on validation
    (a refit takes its hold-out run's: its own validation images were trained on), saved with the model and
    applied to every probability from here on. Returns the metrics and each part's (index, labels, probs)."""
    from safetensors.torch import load_file

    cfg, accelerator, refit = r.cfg, r.accelerator, r.refit
    kept = accelerator.unwrap_model(r.model)
    kept.load_state_dict(load_file(str(r.folder.model_weights)))
    # evaluate exactly as cxr.eval and the app will run it (contiguous layout), so their numbers agree
    kept.to(memory_format=torch.contiguous_format)
    parts = {"train": "train (un-augmented)", "validation": "validation", "test": "test"}
    outputs = {
        part: predict_outputs(r.model, r.loaders["train_eval" if part == "train" else part], accelerator, desc=desc)
        for part, desc in parts.items()
    }
    logits = {part: (o.index, o.labels, o.logits) for part, o in outputs.items()}
    finished = finish(
        _held_out(r, logits["validation"][1:]),
        logits["validation"][1:],
        logits["test"][1:],
        calibrate=cfg.calibrate,
        max_missed_rate=cfg.max_missed_rate,
        fitted=None if refit is None else refit.calibration,
        fitted_from="" if refit is None else f"{refit.holdout.name}/",
        guard=_guard_inputs(r, outputs),
    )
    calibration, t, op, ood = finished.calibration, finished.temperature, finished.operating_point, finished.ood
    if ood is not None:
        accelerator.print(
            f"out-of-distribution guard: test {ood['test_flagged']}/{ood['test_images']} flagged, "
            f"non-radiographs {ood['probes_flagged']}/{ood['probes']} flagged"
        )
    if accelerator.is_main_process:
        if finished.guard is not None:
            finished.guard.save(r.folder.model_dir)
        if calibration is not None:
            set_model_temperature(r.folder.model_dir, t)
        if op is not None:
            set_model_operating_point(r.folder.model_dir, op.to_config())
    if calibration is not None:
        accelerator.print(
            f"temperature {t:.3f} ({calibration['note']}); ECE validation "
            f"{calibration['validation']['ece_before']:.3f} -> {calibration['validation']['ece_after']:.3f}, "
            f"test {calibration['test']['ece_before']:.3f} -> {calibration['test']['ece_after']:.3f}"
        )
    accelerator.print(
        "operating point: none (no COVID or Viral Pneumonia film among the held-out ones): the decision is argmax"
        if op is None
        else f"operating point: {op.rule} ({op.rates['critical_called_normal']}/{op.rates['critical']} "
        f"COVID + Viral Pneumonia called Normal on {op.chosen_on})"
    )
    # every probability reported from here on is the calibrated one, computed as cxr.eval and the app compute it
    predictions = {part: (index, labels, softmax(z, t)) for part, (index, labels, z) in logits.items()}
    metrics = {part: _split_metrics(labels, probs) for part, (_, labels, probs) in predictions.items()}
    metrics["decision"] = decision_metrics(*predictions["test"][1:], op)
    metrics.update(
        kept_epoch=r.kept_at["epoch"], best_epoch=r.best["epoch"], keep=cfg.keep, run_id=r.run_info["run_id"]
    )
    if refit is not None:
        metrics["final_fit"] = {"holdout": refit.holdout.name, "validation_held_out": False}
    if calibration is not None:
        metrics["calibration"] = calibration
    if ood is not None:
        metrics["ood"] = ood
    return metrics, predictions


def _held_out(r: _Run, validation: Tuple[np.ndarray, np.ndarray]) -> HeldOut:
    """What the temperature and the operating point are chosen on (``--choose-on``): a cross-validation's
    out-of-fold predictions (``auto``: the bundled ones of the default recipe on the sample, when this run is that
    recipe on 600 images), or the run's own validation images (a refit's were trained on: its hold-out run's
    validation predictions then)."""
    cfg, refit = r.cfg, r.refit
    test_films = [r.file_names[i] for i in r.rows["test"]]
    if cfg.choose_on == "auto":
        carried = bundled_for(cfg.to_dict(), len(r.pix))
        if carried is not None:
            return carried.without(test_films, "of this run's test films")
    elif cfg.choose_on != "validation":
        return from_cv(cfg.choose_on).without(test_films, "of this run's test films")
    if refit is not None:
        hold = RunFolder(refit.holdout)
        t = (refit.calibration or {}).get("temperature") or 1.0
        return from_predictions(
            hold.predictions("validation"), t, f"the hold-out run's validation images ({refit.holdout.name}/)"
        )
    return from_logits(*validation, f"{len(validation[0])} validation images")


def _ood_line(ood: Optional[Dict[str, Any]]) -> str:
    """The run report's line on the out-of-distribution guard: both measured rates."""
    if ood is None:
        return "none (the model has no classifier layer to read features from)"
    missed = f"; missed: {', '.join(ood['probes_missed'])}" if ood["probes_missed"] else ""
    return (
        f"distance to the {ood['k']}th nearest training image in feature space, threshold {ood['threshold']:.4f} "
        f"set on validation (model/{MODEL_OOD_NAME}); flagged: real X-rays of the test split "
        f"{ood['test_flagged']}/{ood['test_images']} ({100 * ood['test_flagged'] / ood['test_images']:.1f}%, "
        f"target ≤ 5%), grey images that are not chest X-rays {ood['probes_flagged']}/{ood['probes']} "
        f"({100 * ood['probes_flagged'] / ood['probes']:.1f}%, target ≥ 95%){missed}"
    )


def _guard_inputs(r: _Run, outputs: Dict[str, Outputs]) -> Optional[GuardInputs]:
    """The kept model's features for :func:`cxr.training.finish.fit_guard`: its training, validation and test
    images' (from the evaluation forwards) and grey images that are not chest X-rays' (one forward here);
    ``None`` for a model without a classifier layer to read features from."""
    from cxr.models.ood import capture_features, probe_images

    train, val, test = outputs["train"], outputs["validation"], outputs["test"]
    if train.features is None:
        return None
    # an output's index is a position in its own part: the dataset rows say which image it is
    rows = {part: np.asarray(r.rows[part])[o.index] for part, o in outputs.items()}
    others = ~np.isin(rows["train"], rows["validation"])  # all of them, unless this is a refit
    kept = r.accelerator.unwrap_model(r.model)
    probes = probe_images()
    x = torch.stack([r.prep.transform(im) for im in probes.values()]).to(r.accelerator.device)
    with torch.inference_mode(), capture_features(kept) as captured:
        kept(x)
    return GuardInputs(
        reference=train.features,
        fit_on=train.features[others],
        validation=val.features,
        test=test.features,
        test_files=[r.file_names[i] for i in rows["test"]],
        probes=captured.take().cpu(),
        probe_names=list(probes),
    )


def _write_results(r: _Run, metrics: Dict[str, Any], predictions: Dict[str, Tuple[np.ndarray, ...]]) -> None:
    """History, training curves, every part's predictions, metrics and the run report (main process)."""
    cfg, folder, kept_epoch = r.cfg, r.folder, r.kept_at["epoch"]
    write_json(
        folder.history, {"kept_epoch": kept_epoch, "best_epoch": r.best["epoch"], "keep": cfg.keep, "epochs": r.history}
    )
    rule = "last, final fit" if r.refit else cfg.keep
    plot_training_curves(folder.training_curves, r.history, kept_epoch=kept_epoch, kept_rule=rule)
    files = {part: [r.file_names[r.rows[part][i]] for i in index] for part, (index, _, _) in predictions.items()}
    from cxr.models.classifier import CXRClassifier
    from cxr.training.error_gallery import error_entries

    kept = CXRClassifier.from_pretrained(folder.model_dir)  # the saved model, as cxr.eval and the app load it
    for part in ("validation", "train"):
        write_predictions(folder.predictions(part), files[part], *predictions[part][1:], decide=kept.decide)
    calibration, prep, info = metrics.get("calibration"), r.prep, r.run_info
    n = {part: len(r.rows[part]) for part in SPLITS}
    report = {
        "data": f"{_describe_data(r.data_source)} ({len(r.pix)} images; split {n['train']}/{n['validation']}/"
        f"{n['test']}, seed {cfg.seed}, {folder.split.name})",
        "pretrained": info["pretrained"],
        "trained layers": f"{cfg.train_layers} ({info['trainable_parameters']:,} of {info['parameters']:,} parameters)",
        "preprocessing": f"grey{', CLAHE' if prep.clahe else ''}, {prep.image_size}px, {prep.in_chans} channel(s), "
        f"norm {prep.norm} mean {list(prep.mean)} std {list(prep.std)}",
        "optimisation": f"{recipe_summary(cfg.to_dict())}, {r.accelerator.num_processes} process(es)",
        "kept model": kept_description(metrics),
        "train accuracy": "the kept model on the un-augmented training images",
        "calibration": calibration_description(calibration),
        "out-of-distribution guard": _ood_line(metrics.get("ood")),
        "run": f"{info['run_id']} (the same id is in run_config.json, metrics.json and model/config.json)",
        "note": DISCLAIMER,
    }
    _, labels, probs = predictions["test"]
    test_view = RadiographDataset(r.pix, r.prep, r.rows["test"])  # positions = the predictions' sorted index
    errors = error_entries(kept, test_view, files["test"], labels, probs, kept.decide(np.round(probs, 6)))
    write_evaluation(
        folder.root, cfg.model, metrics, report, files["test"], labels, probs, kept.operating_point, errors
    )


def _check_push_target_on_main(accelerator, cfg: TrainConfig) -> None:
    """Check token and repository on the main process before training; every process stops if it fails."""
    from accelerate.utils import broadcast_object_list

    from cxr.hub.publish import check_push_target

    message: List[Optional[str]] = [None]
    if accelerator.is_main_process:
        try:
            check_push_target(cfg.hub_model_id, private=cfg.hub_private)
        except CXRError as e:
            message[0] = str(e)
    if accelerator.num_processes > 1:
        broadcast_object_list(message)
    if message[0]:
        raise CXRError(message[0])


def _describe_data(source: Dict[str, Any]) -> str:
    """One line for logs and reports: ``ORG/NAME @ sha (config c)`` or the folder's path."""
    if source["kind"] == "hub":
        text = f"Hub dataset {source['id']} @ {source['revision']}"
        if source["requested_revision"] not in ("main", source["revision"]):
            text += f" ({source['requested_revision']})"
        if source.get("from_cache"):
            text += ", cached copy"
    else:
        text = source["path"]
    return text + (f", config {source['config']}" if source.get("config") else "")


def _model_info(run_info: Dict[str, Any], cfg: TrainConfig) -> Dict[str, Any]:
    info = {k: v for k, v in run_info.items() if k not in ("preprocessing", "first_trainable_parameter")}
    info.update({"data": cfg.data, "seed": cfg.seed, "epochs": cfg.epochs, "disclaimer": DISCLAIMER})
    return info
