"""The recipes ``--preset`` names and the groups of settings that make a recipe: what a resumed run must keep
(:data:`RESUME_LOCKED`) and what makes two runs the same recipe (:data:`RECIPE_KEYS`)."""

from __future__ import annotations

from typing import Any, Dict

__all__ = [
    "PRESETS",
    "OPTIMIZERS",
    "SCHEDULERS",
    "KEEP_RULES",
    "MIXED_PRECISION",
    "REPORT_TO",
    "RESUME_LOCKED",
    "RECIPE_KEYS",
    "preset_flags",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("constant", "cosine")
#: Which epoch's model a run keeps: the best on validation, or the last one.
KEEP_RULES = ("best", "last")
#: The recipes ``--preset`` names; each recipe flag left unset takes its preset's value (``epochs`` and
#: ``batch_size`` ``None``: the model's study values). ``paper`` is the study's own recipe; ``default``
#: the one cross-validation chose (README, "Choosing the recipe").
PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": dict(
        optimizer="adam",
        lr=5e-4,
        weight_decay=0.0,
        lr_scheduler="constant",
        warmup_epochs=0.0,
        label_smoothing=0.0,
        augment="study",
        keep="best",
        final_fit=False,
        epochs=None,
        batch_size=None,
        layer_decay=1.0,
        drop_path=0.0,
        freeze_bn_stats=False,
    ),
}
PRESETS["default"] = dict(
    optimizer="adamw",
    lr=1e-3,
    weight_decay=0.05,
    lr_scheduler="cosine",
    warmup_epochs=1.0,
    label_smoothing=0.0,
    augment="flip",
    keep="last",
    final_fit=False,
    epochs=15,
    batch_size=16,
    layer_decay=1.0,
    drop_path=0.0,
    freeze_bn_stats=False,
)
MIXED_PRECISION = ("no", "fp16", "bf16")
REPORT_TO = ("none", "tensorboard", "all")
#: Settings that must not change when a run is resumed.
RESUME_LOCKED = (
    "model",
    "image_size",
    "norm",
    "clahe",
    "seed",
    "train_layers",
    "pretrained",
    "batch_size",
    "optimizer",
    "lr_scheduler",
    "warmup_epochs",
    "label_smoothing",
    "ema_decay",
    "clip_grad_norm",
    "augment",
    "keep",
    "final_fit",
    "layer_decay",
    "drop_path",
    "freeze_bn_stats",
)
#: The settings that make two runs the same recipe (a CV keeps a finished fold only if they match).
RECIPE_KEYS = (*RESUME_LOCKED, "epochs", "lr", "weight_decay")


def preset_flags(name: str) -> str:
    """A preset's values as the flags that would set them.

    Example:
        >>> preset_flags("default").split()[:4]
        ['--optimizer', 'adamw', '--lr', '0.001']
    """
    flags = []
    for key, value in PRESETS[name].items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            flags.append(f"{flag} {value}")
    return " ".join(flags)
