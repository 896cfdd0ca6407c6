"""Class activation maps through the ``grad-cam`` package, fed by the checkpoint's own preprocessing.

The input tensor comes from :meth:`CXRClassifier.inputs` — the same code as training — so the map
explains exactly what the model saw (the study normalised differently here than in training).
Target layers come from the model registry (the study's layers for its models), else from timm's
``feature_info``; token outputs of ViT/Swin-style models are reshaped to a grid. Models without a
convolutional layer (``logreg``) get their exact linear contribution map instead.

Example:
    >>> cam = class_activation_map(clf, "chest.png", class_index=0, method="GradCAM")   # doctest: +SKIP
    >>> cam.shape, float(cam.min()) >= 0, float(cam.max()) <= 1                         # doctest: +SKIP
    ((224, 224), True, True)
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from PIL import Image
from torch import nn

from .classifier import CXRClassifier
from .models import STUDY_MODELS
from .preprocessing import ImageLike

__all__ = ["CAM_METHODS", "target_layers", "reshape_transform_for", "class_activation_map", "overlay_heatmap"]

_logger = logging.getLogger(__name__)


def _methods() -> Dict[str, type]:
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM

    return {"GradCAM": GradCAM, "GradCAM++": GradCAMPlusPlus, "HiResCAM": HiResCAM, "XGradCAM": XGradCAM,
            "LayerCAM": LayerCAM, "EigenCAM": EigenCAM}


#: Method names offered in the app, in menu order.
CAM_METHODS: List[str] = ["GradCAM", "GradCAM++", "HiResCAM", "XGradCAM", "LayerCAM", "EigenCAM"]


def target_layers(model: nn.Module, architecture: str) -> Optional[List[nn.Module]]:
    """The layer(s) to explain: the registry's choice, else the deepest feature stage timm reports.

    Returns:
        A list of modules, or ``None`` for models without spatial features (``logreg``).
    """
    spec = STUDY_MODELS.get(architecture)
    if spec is not None and spec.cam_layer:
        return [model.get_submodule(spec.cam_layer)]
    blocks = getattr(model, "blocks", None)
    if getattr(model, "num_prefix_tokens", 0) and blocks is not None and hasattr(blocks[-1], "norm1"):
        # ViT-style: the class token reads the patch tokens in the last block's attention, so explain
        # that attention's input (the last block's output reaches the head through the class token only)
        return [blocks[-1].norm1]
    info = getattr(model, "feature_info", None)
    if info:
        last = info[-1] if isinstance(info, list) else info.get_dicts()[-1]
        if last.get("module"):
            return [model.get_submodule(last["module"])]
    return None


def reshape_transform_for(model: nn.Module) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """Token-to-grid reshape for transformer backbones (ViT: drop prefix tokens; Swin: NHWC to NCHW)."""
    name = type(model).__name__.lower()
    if "swin" in name:
        return lambda t: t.permute(0, 3, 1, 2) if t.ndim == 4 else t
    prefix = getattr(model, "num_prefix_tokens", None)
    if prefix is None:
        return None

    def vit(t: torch.Tensor) -> torch.Tensor:
        if t.ndim != 3:
            return t
        tokens = t[:, prefix:, :]
        side = int(math.isqrt(tokens.shape[1]))
        return tokens[:, : side * side].reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

    return vit


def _linear_contribution(clf: CXRClassifier, x: torch.Tensor, class_index: Optional[int]) -> np.ndarray:
    """Positive per-pixel contribution ``w_k * x`` of a linear model to class ``k``'s logit."""
    head = clf.model.get_classifier()
    with torch.no_grad():
        logits = clf.model(x)
        k = int(logits.argmax(-1)[0]) if class_index is None else class_index
        contrib = (head.weight[k] * x.flatten(1)[0]).reshape(x.shape[1:]).sum(0).clamp(min=0)
    cam = contrib.numpy()
    return cam / cam.max() if cam.max() > 0 else cam


def class_activation_map(
        clf: CXRClassifier,
        image: ImageLike,
        class_index: Optional[int] = None,
        method: str = "GradCAM",
) -> np.ndarray:
    """A class activation map at the model's input size, scaled to [0, 1].

    Args:
        clf: the classifier (its preprocessing builds the input).
        image: path, PIL image or array.
        class_index: the class to explain; ``None`` explains the predicted class.
        method: one of :data:`CAM_METHODS`.

    Returns:
        ``image_size x image_size`` float32 array.

    Raises:
        ValueError: unknown method.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    methods = _methods()
    if method not in methods:
        raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(CAM_METHODS)}")
    x = clf.inputs([image])
    layers = target_layers(clf.model, clf.config.get("architecture", clf.name))
    if layers is None:
        return _linear_contribution(clf, x, class_index).astype(np.float32)
    targets = None if class_index is None else [ClassifierOutputTarget(class_index)]
    with methods[method](model=clf.model, target_layers=layers, reshape_transform=reshape_transform_for(clf.model)) as cam:
        grey = cam(input_tensor=x, targets=targets)
    return np.nan_to_num(grey[0]).astype(np.float32)


def overlay_heatmap(image: Image.Image, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] map (any size) over a grey image, as RGB uint8 of the image's size."""
    import matplotlib

    w, h = image.size
    heat = np.asarray(Image.fromarray((np.clip(cam, 0, 1) * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR))
    colours = matplotlib.colormaps["jet"](heat / 255.0)[..., :3]
    grey = np.asarray(image.convert("L"), dtype=np.float32)[..., None] / 255.0
    blended = (1 - alpha) * grey + alpha * colours
    return np.clip(blended * 255, 0, 255).astype(np.uint8)
