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

from cxr.data.preprocessing import ImageLike
from cxr.models import MODEL_SPECS
from cxr.models.classifier import CXRClassifier
from cxr.models.ood import capture_features

__all__ = [
    "CAM_METHODS",
    "CamSession",
    "target_layers",
    "reshape_transform_for",
    "class_activation_map",
    "overlay_heatmap",
]

_logger = logging.getLogger(__name__)


def _methods() -> Dict[str, type]:
    from pytorch_grad_cam import (  # grad-cam loads only when a heat map is drawn
        EigenCAM,
        GradCAM,
        GradCAMPlusPlus,
        HiResCAM,
        LayerCAM,
        XGradCAM,
    )

    return {
        "GradCAM": GradCAM,
        "GradCAM++": GradCAMPlusPlus,
        "HiResCAM": HiResCAM,
        "XGradCAM": XGradCAM,
        "LayerCAM": LayerCAM,
        "EigenCAM": EigenCAM,
    }


#: Method names offered in the app, in menu order.
CAM_METHODS: List[str] = ["GradCAM", "GradCAM++", "HiResCAM", "XGradCAM", "LayerCAM", "EigenCAM"]


def target_layers(model: nn.Module, architecture: str) -> Optional[List[nn.Module]]:
    """The layer(s) to explain: the registry's choice, else the deepest feature stage timm reports.

    Returns:
        A list of modules, or ``None`` for models without spatial features (``logreg``).
    """
    spec = MODEL_SPECS.get(architecture)
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


class CamSession:
    """One forward shared by the probabilities and the class activation map.

    The forward runs through the CAM method's hooks (activations kept, graph kept);
    :meth:`probabilities` returns its softmax, :meth:`heatmap` then back-propagates that same
    forward for the chosen class. Use as a context manager: leaving it removes the hooks. A session holds
    the classifier's :attr:`~cxr.models.classifier.CXRClassifier.lock` from its start to its end, so other
    threads' predictions and sessions on the same model wait for it (sessions on several models: open them in
    one fixed order).

    Args:
        clf: the classifier (its preprocessing builds the input, as in training).
        method: one of :data:`CAM_METHODS`.

    Example:
        >>> with CamSession(clf, "GradCAM") as s:                      # doctest: +SKIP
        ...     probs = s.probabilities("chest.png")
        ...     cam = s.heatmap()                                      # predicted class
    """

    def __init__(self, clf: CXRClassifier, method: str = "GradCAM"):
        methods = _methods()
        if method not in methods:
            raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(CAM_METHODS)}")
        self.clf = clf
        clf.lock.acquire()  # released by __exit__, or here if the hooks cannot be set up
        self._holding = True
        try:
            layers = target_layers(clf.model, clf.config.get("architecture", clf.name))
            self.cam = (
                None
                if layers is None
                else methods[method](
                    model=clf.model, target_layers=layers, reshape_transform=reshape_transform_for(clf.model)
                )
            )
        except BaseException:
            self._release()
            raise
        self.x: Optional[torch.Tensor] = None
        self.outputs: Optional[torch.Tensor] = None
        #: whether the model's out-of-distribution guard flagged the image (``None``: the model has no guard)
        self.out_of_distribution: Optional[bool] = None

    def __enter__(self) -> "CamSession":
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.cam is not None:
                self.cam.__exit__(*exc)
            self.x = self.outputs = None
        finally:
            self._release()

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self.clf.lock.release()

    def probabilities(self, image: ImageLike) -> np.ndarray:
        """Forward ``image`` once (hooks recording) and return its class probabilities; the same forward tells
        :attr:`out_of_distribution`."""
        return self.probabilities_of_input(self.clf.inputs([image]))

    def probabilities_of_input(self, x: torch.Tensor) -> np.ndarray:
        """:meth:`probabilities` of one input already preprocessed (``1 x C x H x W``, e.g. a dataset's
        ``pixel_values``)."""
        self.x = x.to(self.clf.device)
        with capture_features(self.clf.model) as captured:
            if self.cam is None:
                with torch.no_grad():
                    self.outputs = self.clf.model(self.x)
            else:
                self.outputs = self.cam.activations_and_grads(self.x)
        guard = self.clf.ood
        self.out_of_distribution = (
            None if guard is None or captured is None else bool(guard.flags(captured.take().cpu())[0])
        )
        return self.clf.probabilities(self.outputs.detach())[0].cpu().numpy()

    def heatmap(self, class_index: Optional[int] = None) -> np.ndarray:
        """The map for ``class_index`` (default: the predicted class) from the forward already run."""
        from pytorch_grad_cam.utils.model_targets import (
            ClassifierOutputTarget,  # grad-cam loads only when a heat map is drawn
        )

        if self.outputs is None:
            raise RuntimeError("call probabilities() first")
        k = int(self.outputs[0].argmax()) if class_index is None else int(class_index)
        if self.cam is None:
            return _linear_contribution(self.clf, self.x, k)
        targets = [ClassifierOutputTarget(k)]
        if self.cam.uses_gradients:
            self.clf.model.zero_grad(set_to_none=True)
            targets[0](self.outputs[0]).backward()
        maps = self.cam.compute_cam_per_layer(self.x, targets, False)
        grey = self.cam.aggregate_multi_layers(maps)[0]
        self.clf.model.zero_grad(set_to_none=True)
        return np.nan_to_num(grey).astype(np.float32)


def _linear_contribution(clf: CXRClassifier, x: torch.Tensor, k: int) -> np.ndarray:
    """Positive per-pixel contribution ``w_k * x`` of a linear model to class ``k``'s logit."""
    head = clf.model.get_classifier()
    with torch.no_grad():
        contrib = (head.weight[k] * x.flatten(1)[0]).reshape(x.shape[1:]).sum(0).clamp(min=0)
    cam = contrib.cpu().numpy()
    return (cam / cam.max() if cam.max() > 0 else cam).astype(np.float32)


def class_activation_map(
    clf: CXRClassifier,
    image: ImageLike,
    class_index: Optional[int] = None,
    method: str = "GradCAM",
) -> np.ndarray:
    """A class activation map at the model's input size, scaled to [0, 1] (one :class:`CamSession`).

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
    with CamSession(clf, method) as session:
        session.probabilities(image)
        return session.heatmap(class_index)


def overlay_heatmap(image: Image.Image, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] map (any size) over a grey image, as RGB uint8 of the image's size."""
    import matplotlib  # matplotlib loads only when a figure is drawn

    w, h = image.size
    heat = np.asarray(
        Image.fromarray((np.clip(cam, 0, 1) * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)
    )
    colours = matplotlib.colormaps["jet"](heat / 255.0)[..., :3]
    grey = np.asarray(image.convert("L"), dtype=np.float32)[..., None] / 255.0
    blended = (1 - alpha) * grey + alpha * colours
    return np.clip(blended * 255, 0, 255).astype(np.uint8)
