"""The build stage of a training run: the model with its preprocessing (the one source of truth saved with the
checkpoint), the loaders, the optimiser and the learning-rate schedule (:func:`make_optimizer`,
:func:`make_scheduler`), all prepared by Accelerate, and the weight EMA if asked."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List

import torch
from torch import nn

from cxr.data.dataset import ModelInput, RadiographDataset
from cxr.data.device_augment import DeviceAugmentation
from cxr.data.preprocessing import PreprocessConfig, TrainAugmentation
from cxr.models import apply_train_layers, create_model
from cxr.training.config import Recipe
from cxr.training.run_data import RunData

__all__ = [
    "TrainSetup",
    "build",
    "make_loader",
    "LOADERS",
    "AUGMENT_ON",
    "augment_generator",
    "make_optimizer",
    "make_scheduler",
    "lr_factor",
]

#: The loaders of a run: augmented training, un-augmented training (its evaluation), validation and test.
LOADERS = ("train", "train_eval", "validation", "test")
#: Where ``--augment-on`` augments: each film in the loader's workers, or each batch on the training device.
AUGMENT_ON = ("loader", "device")


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """What trains: the prepared model, optimiser and schedule, the loaders (:data:`LOADERS`), the weight EMA
    (``None`` without ``--ema-decay``), the preprocessing, what ``run_config.json`` says of the model, the model
    input of training batches (augmented there with ``--augment-on device``) and of every other batch, and the
    device generator that training's batched augmentation draws from (:func:`augment_generator`)."""

    model: Any
    optimizer: Any
    scheduler: Any
    loaders: Dict[str, Any]
    steps_per_epoch: int
    ema: Any
    prep: PreprocessConfig
    model_info: Dict[str, Any]
    train_input: ModelInput
    eval_input: ModelInput
    generator: torch.Generator

    def kept_model(self, accelerator: Any) -> nn.Module:
        """The model validated and kept: the weight average with ``--ema-decay``, else the trained weights."""
        return accelerator.unwrap_model(self.model) if self.ema is None else self.ema.module

    def validated_model(self) -> Any:
        """The model validation runs (prepared by Accelerate, or the EMA's)."""
        return self.model if self.ema is None else self.ema.module


def _collate(batch):
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}


def make_loader(
    pix: Any,
    prep: PreprocessConfig,
    rows: List[int],
    micro_batch: int,
    augment: bool,
    num_workers: int,
    augmentation: str = "study",
    augment_on: str = "loader",
) -> torch.utils.data.DataLoader:
    """The loader a run uses for one part: cached uint8 pixels, shuffled and (``augment_on="loader"``) augmented
    film by film in the workers when ``augment``; the model input is made of each batch on the device
    (:class:`~cxr.data.dataset.ModelInput`)."""
    in_workers = augment and augment_on == "loader"
    view = RadiographDataset(pix, prep, rows, TrainAugmentation.named(augmentation) if in_workers else None)
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


def build(cfg: Recipe, data: RunData, accelerator: Any, micro_batch: int) -> TrainSetup:
    """The model, preprocessing, loaders, optimiser, schedule and EMA of a run, seeded by ``cfg.seed``; writes
    nothing."""
    from accelerate.utils import set_seed  # accelerate loads only when a run starts

    set_seed(cfg.seed)
    model, pretrained_source = create_model(
        cfg.model, len(data.classes), cfg.pretrained, cfg.image_size, drop_path=cfg.drop_path
    )
    trainable = apply_train_layers(model, cfg.model, cfg.train_layers)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    pcfg = model.pretrained_cfg
    prep = PreprocessConfig.create(
        cfg.image_size,
        in_chans=pcfg["input_size"][0],
        norm=cfg.norm,
        model_mean=pcfg.get("mean"),
        model_std=pcfg.get("std"),
        clahe=cfg.clahe,
        label_names=data.classes.names,
    )
    model_info = {
        "model": cfg.model,
        "pretrained": pretrained_source,
        "train_layers": cfg.train_layers,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "parameters": sum(p.numel() for p in model.parameters()),
        "preprocessing": prep.to_dict(),
        "first_trainable_parameter": trainable[0],
    }
    loaders = [
        make_loader(
            data.pix, prep, data.rows[n.split("_")[0]], micro_batch, n == "train", cfg.num_workers, cfg.augment,
            cfg.augment_on,
        )
        for n in LOADERS
    ]  # fmt: skip
    on_device = DeviceAugmentation.named(cfg.augment) if cfg.augment_on == "device" else None
    train_input = ModelInput(prep, on_device, channels_last=cfg.channels_last)
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.layer_decay)
    steps_per_epoch = math.ceil(len(loaders[0]) / cfg.gradient_accumulation_steps)
    scheduler = make_scheduler(optimizer, cfg.lr_scheduler, cfg.epochs, steps_per_epoch, cfg.warmup_epochs)
    model, optimizer, *loaders, scheduler = accelerator.prepare(model, optimizer, *loaders, scheduler)
    ema = None
    if cfg.ema_decay is not None:  # evaluated and kept instead of the raw weights
        from timm.utils import ModelEmaV3  # timm's utilities load only for a run that averages

        # the decay ramps up from 0 (timm's warm-up), so the average does not drag the randomly initialised head along
        ema = ModelEmaV3(
            accelerator.unwrap_model(model), decay=cfg.ema_decay, use_warmup=True, device=accelerator.device
        )
    return TrainSetup(
        model,
        optimizer,
        scheduler,
        dict(zip(LOADERS, loaders)),
        steps_per_epoch,
        ema,
        prep,
        model_info,
        train_input,
        ModelInput(prep),
        torch.Generator(device=accelerator.device),
    )


def augment_generator(generator: torch.Generator, seed: int, epoch: int, process_index: int) -> torch.Generator:
    """``generator`` seeded for one epoch of one process: the batched augmentation's draws depend on (seed, epoch,
    process) only, as the loader workers' do, so a run resumed after an epoch repeats them exactly."""
    return generator.manual_seed((seed * 1_000_003 + epoch) * 1_009 + process_index)


def make_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, layer_decay: float = 1.0
) -> torch.optim.Optimizer:
    """The optimiser of ``model``'s trainable parameters; with ``layer_decay`` below 1, one parameter group per
    layer (timm's grouping), each layer's learning rate ``layer_decay`` times the next one's, the head's ``lr``,
    and no weight decay on biases and norm parameters."""
    params: Any = [p for p in model.parameters() if p.requires_grad]
    if layer_decay < 1:
        from timm.optim import param_groups_layer_decay  # timm's optimiser package loads only when asked for

        params = param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay)
        for group in params:
            group["lr"] = lr * group["lr_scale"]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """The learning-rate multiplier at optimiser step ``step``: linear warm-up over ``warmup_steps`` (from
    1/``warmup_steps``), then constant or a cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, epochs: int, steps_per_epoch: int, warmup_epochs: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`lr_factor` per optimiser step over ``epochs`` of ``steps_per_epoch``."""
    warmup = int(round(warmup_epochs * steps_per_epoch))
    total = steps_per_epoch * epochs
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, schedule))
