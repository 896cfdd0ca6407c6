"""The out-of-distribution guard: does an image look like the chest X-rays a model was trained on?

A model folder carries a compact summary of its training images in the model's own feature space
(:data:`OOD_FILE`): for each training image, the per-channel mean and standard deviation of every feature
stage timm lists for the model (``feature_info``; the classifier's input for a model without stages), each
stage scaled to unit length, in float16 (a few MB). An image's score is the cosine distance to its k-th
nearest training image (deep nearest neighbours, Sun et al., ICML 2022); it is flagged when the score is
above a threshold set on the validation split, which the reference never saw. Training measures the guard on
the test split (real X-rays: few should be flagged) and on :func:`probe_images` (grey photographs, blank and
noise images, other grey non-radiographs: all should be), and reports both rates. The stages matter: a
fine-tuned model's last features keep what tells the four classes apart, and a blank or a photograph can
land among the X-rays there; earlier stages still see that its texture is nothing like a radiograph's.

The features come from the same forward as the prediction (:func:`capture_features`), so the guard costs
no extra pass through the model.

Example:
    >>> guard = OODGuard.load("runs/lite0/model")                      # doctest: +SKIP
    >>> with capture_features(model) as feats:                         # doctest: +SKIP
    ...     logits = model(x)
    >>> guard.flags(feats.take())                                      # doctest: +SKIP
    array([False])
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import logging
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from cxr.locations import is_hub_id
from cxr.run_folder import MODEL_OOD_NAME

__all__ = [
    "OOD_FILE",
    "OOD_MESSAGE",
    "OODGuard",
    "OutOfDistributionWarning",
    "FeatureCapture",
    "capture_features",
    "probe_images",
    "reference_choice",
    "reference_limit",
    "MAX_REFERENCE",
    "MAX_REFERENCE_BYTES",
]

_logger = logging.getLogger(__name__)

#: The guard's file in a model folder (safetensors: the reference features; its metadata: k and threshold).
OOD_FILE = MODEL_OOD_NAME
#: What a flagged image's answer is shown with.
OOD_MESSAGE = "This image does not look like the chest X-rays this model was trained on: its answer means nothing here."
#: The share of validation images allowed above the threshold (it sets the threshold).
VALIDATION_FLAG_RATE = 0.02
#: Neighbours: the score is the distance to the k-th nearest training image.
DEFAULT_K = 5
#: The most training images a guard keeps as its reference (a seeded random choice of them beyond that), so a
#: model's guard, its file and the memory that scoring takes stay the same size whatever the training set's ...
MAX_REFERENCE = 5000
#: ... and at most this many bytes of float32 features (:func:`reference_limit`): a model whose features are wide
#: (the pixel baseline's are its input pixels) keeps fewer images.
MAX_REFERENCE_BYTES = 128 << 20


class OutOfDistributionWarning(UserWarning):
    """:meth:`cxr.CXRClassifier.predict` was given an image unlike the model's training images."""


class FeatureCapture:
    """The features recorded by :func:`capture_features`: per stage, each forward's batch."""

    def __init__(self, stages: int) -> None:
        self.parts: List[List[torch.Tensor]] = [[] for _ in range(stages)]

    def take(self) -> torch.Tensor:
        """The features recorded since the last call (``N x D``, float32), and forget them: each stage's
        vector scaled to unit length, the stages side by side."""
        if not self.parts[0]:
            return torch.empty(0)
        stages = [torch.cat(p) for p in self.parts]
        for p in self.parts:
            p.clear()
        return torch.cat([s / s.norm(dim=1, keepdim=True).clamp_min(1e-12) for s in stages], dim=1)


def _stages(model: nn.Module) -> List[Tuple[nn.Module, Optional[int]]]:
    """The modules whose outputs describe an image, with their channel count: timm's feature stages
    (``feature_info``); empty for a model that lists none (:func:`capture_features` then reads the classifier's
    input)."""
    modules = dict(model.named_modules())
    info = getattr(model, "feature_info", None)
    stages = []
    if isinstance(info, (list, tuple)):
        stages = [(modules[f["module"]], f.get("num_chs")) for f in info if f.get("module") in modules]
    return stages


def _summary(output: torch.Tensor, channels: Optional[int]) -> torch.Tensor:
    """Per-channel mean and standard deviation of a stage's output over its positions (``N x 2C``)."""
    x = output.detach().float()
    if x.ndim == 2:
        return x
    channel_dim = next((d for d in range(1, x.ndim) if x.shape[d] == channels), 1)
    x = x.movedim(channel_dim, -1).flatten(1, -2)  # N x positions x C
    return torch.cat([x.mean(1), x.std(1, unbiased=False)], dim=1)


@contextlib.contextmanager
def capture_features(model: nn.Module) -> Iterator[Optional[FeatureCapture]]:
    """Record what the guard compares on every forward of ``model``: the per-channel mean and standard
    deviation of each of timm's feature stages (``feature_info``: low-level texture to high-level content, so
    neither a blank nor a photograph resembles a radiograph at every stage); for a model without stages, the
    input of its classifier layer.

    Yields ``None`` for a model with neither: no guard applies to it.
    """
    stages = _stages(model)
    hooks = []
    if stages:
        capture = FeatureCapture(len(stages))
        for i, (module, channels) in enumerate(stages):
            hooks.append(
                module.register_forward_hook(
                    lambda _m, _args, out, i=i, c=channels: capture.parts[i].append(_summary(out, c))
                )
            )
    else:
        getter = getattr(model, "get_classifier", None)
        head = getter() if callable(getter) else None
        if not isinstance(head, nn.Module):
            yield None
            return
        capture = FeatureCapture(1)
        hooks.append(
            head.register_forward_pre_hook(
                lambda _m, args: capture.parts[0].append(args[0].detach().flatten(1).float())
            )
        )
    try:
        yield capture
    finally:
        for h in hooks:
            h.remove()


def _normalised(features: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
    f = torch.as_tensor(features).float()  # a copy when they are float16; normalised in place
    if f.data_ptr() == torch.as_tensor(features).data_ptr():
        f = f.clone()
    return f.div_(f.norm(dim=1, keepdim=True).clamp_min(1e-12))


@dataclasses.dataclass
class OODGuard:
    """Nearest-neighbour distance to the training images, in the model's feature space.

    Args:
        reference: the training images' normalised features, ``N x D``.
        threshold: scores above it are flagged.
        k: the neighbour whose distance is the score.
    """

    reference: torch.Tensor
    threshold: float
    k: int = DEFAULT_K
    #: the validation films' scores that set the threshold (set by :meth:`fit`, saved with the guard):
    #: the reference a whole evaluated set's scores are compared with (:mod:`cxr.metrics.shift`)
    validation_scores: Optional[np.ndarray] = None

    @classmethod
    def fit(
        cls,
        train_features: Union[torch.Tensor, np.ndarray],
        validation_features: Union[torch.Tensor, np.ndarray],
        k: int = DEFAULT_K,
        flag_rate: float = VALIDATION_FLAG_RATE,
        reference: Optional[Union[torch.Tensor, np.ndarray]] = None,
    ) -> "OODGuard":
        """The guard of a model: its training images as the reference, the threshold the validation
        score quantile ``1 - flag_rate`` (so about ``flag_rate`` of real X-rays like the validation ones are
        flagged).

        Args:
            train_features: the training images' features (:func:`capture_features`), the validation images not among them.
            validation_features: the validation images' features (they set the threshold).
            k: the neighbour whose distance is the score.
            flag_rate: the share of validation images above the threshold.
            reference: the features to keep instead of ``train_features`` (a refit, trained on the validation
                images too, keeps them all; the threshold still comes from scoring them against the others).
        """
        guard = cls.from_reference(train_features, k)
        guard.set_threshold(guard.scores(validation_features), flag_rate)
        if reference is not None:
            guard.reference = _normalised(reference)
        return guard

    @classmethod
    def from_reference(cls, features: Union[torch.Tensor, np.ndarray], k: int = DEFAULT_K) -> "OODGuard":
        """A guard whose reference is ``features`` (training images'), its threshold not yet set
        (:meth:`set_threshold`)."""
        return cls(_normalised(features), threshold=float("inf"), k=min(k, len(features)))

    def set_threshold(self, validation_scores: np.ndarray, flag_rate: float = VALIDATION_FLAG_RATE) -> None:
        """Set the threshold to the validation scores' ``1 - flag_rate`` quantile, and keep those scores."""
        self.threshold = float(np.quantile(validation_scores, 1.0 - flag_rate, method="higher"))
        self.validation_scores = np.asarray(validation_scores, dtype=np.float32)

    def scores(self, features: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
        """Cosine distance of each row of ``features`` to its k-th nearest reference image."""
        queries = _normalised(features)
        similarity = queries @ self.reference.float().T
        kth = similarity.topk(self.k, dim=1).values[:, -1]
        return (1.0 - kth).numpy()

    def flags(self, features: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
        """``True`` for each row far from every training image."""
        return self.scores(features) > self.threshold

    def save(self, model_dir: Union[str, os.PathLike]) -> Path:
        """Write :data:`OOD_FILE` into ``model_dir``."""
        path = Path(model_dir) / OOD_FILE
        tensors = {"reference": self.reference.to(torch.float16).contiguous()}
        if self.validation_scores is not None:
            tensors["validation_scores"] = torch.as_tensor(self.validation_scores, dtype=torch.float32).contiguous()
        save_file(
            tensors,
            str(path),
            metadata={"k": str(self.k), "threshold": repr(self.threshold), "score": "cosine distance to k-th NN"},
        )
        return path

    @classmethod
    def load_file(cls, path: Union[str, os.PathLike]) -> "OODGuard":
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            reference = f.get_tensor("reference").float()
            scores = f.get_tensor("validation_scores").numpy()
        return cls(reference, threshold=float(meta["threshold"]), k=int(meta["k"]), validation_scores=scores)

    @classmethod
    def load(cls, ref: Union[str, os.PathLike], revision: Optional[str] = None) -> Optional["OODGuard"]:
        """The guard of a local model folder or Hub model, or ``None`` when it has none (a model without a
        classifier layer to read features from). A Hub model's file comes through ``hf_hub_download``, as its
        weights do."""

        if Path(ref).is_dir() or not is_hub_id(str(ref)):
            path = Path(ref) / OOD_FILE
            return cls.load_file(path) if path.is_file() else None
        from huggingface_hub import hf_hub_download  # the Hub client loads only for a Hub id
        from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

        try:
            return cls.load_file(hf_hub_download(str(ref), OOD_FILE, revision=revision))
        except RemoteEntryNotFoundError:  # a model without a guard
            return None
        except LocalEntryNotFoundError:
            _logger.warning("%s: the out-of-distribution guard could not be fetched (offline?); no guard", ref)
            return None


def reference_limit(width: int) -> int:
    """How many training images' features of ``width`` values a guard keeps at most.

    Example:
        >>> reference_limit(1024), reference_limit(224 * 224)
        (5000, 668)
    """
    return max(1, min(MAX_REFERENCE, MAX_REFERENCE_BYTES // (4 * max(int(width), 1))))


def reference_choice(eligible: np.ndarray, limit: int = MAX_REFERENCE, seed: int = 0) -> np.ndarray:
    """Which images a guard keeps as its reference: every ``eligible`` one (a boolean per image), or a seeded random
    ``limit`` of them when there are more.

    Example:
        >>> int(reference_choice(np.ones(12000, dtype=bool), limit=5000).sum())
        5000
    """
    eligible = np.asarray(eligible, dtype=bool)
    where = np.flatnonzero(eligible)
    if len(where) <= limit:
        return eligible.copy()
    chosen = np.zeros_like(eligible)
    chosen[np.random.default_rng(seed).choice(where, size=limit, replace=False)] = True
    return chosen


def probe_images(size: int = 512, seed: int = 0) -> Dict[str, Image.Image]:
    """Grey images that are not chest X-rays, all available offline: photographs (matplotlib's
    ``grace_hopper.jpg``, scikit-learn's sample photos, whole and cropped), graphics, an MRI slice and terrain
    maps (matplotlib's sample data), blank images, uniform and Gaussian noise, a gradient and a checkerboard.

    Returns:
        ``{name: mode-L image}``.
    """
    import matplotlib.cbook as cbook  # matplotlib loads only when a figure is drawn
    from sklearn.datasets import load_sample_image  # scikit-learn loads only for the guard's probe photos

    rng = np.random.default_rng(seed)
    out: Dict[str, Image.Image] = {}

    def add(name: str, image: Image.Image) -> None:
        out[name] = image.convert("L").resize((size, size), Image.Resampling.BILINEAR)

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        hopper = im.convert("L")
    photos = {"grace_hopper": hopper}
    for name in ("china.jpg", "flower.jpg"):
        photos[name.split(".")[0]] = Image.fromarray(load_sample_image(name)).convert("L")
    for name, image in photos.items():
        add(f"photo: {name}", image)
        w, h = image.size
        add(f"photo: {name}, centre crop", image.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4)))
    for name in ("logo2.png", "Minduka_Present_Blue_Pack.png"):
        with Image.open(cbook.get_sample_data(name)) as im:
            add(f"graphic: {name.split('.')[0]}", im.convert("RGBA").convert("L"))
    with gzip.open(cbook.get_sample_data("s1045.ima.gz", asfileobj=False), "rb") as f:
        mri = np.frombuffer(f.read(), np.uint16).reshape(256, 256).astype(np.float32)
    add("MRI slice (brain)", Image.fromarray(np.uint8(255 * mri / mri.max())))
    for name, key in (("jacksboro_fault_dem.npz", "elevation"), ("topobathy.npz", "topo")):
        with np.load(cbook.get_sample_data(name, asfileobj=False)) as z:
            arr = np.asarray(z[key], dtype=np.float32)
        arr = (arr - arr.min()) / max(float(np.ptp(arr)), 1e-6)
        add(f"terrain map: {name.split('.')[0]}", Image.fromarray(np.uint8(255 * arr)))
    for level in (0, 128, 255):
        add(f"blank ({level})", Image.new("L", (size, size), level))
    for i in range(2):
        add(f"uniform noise {i + 1}", Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)))
        gauss = np.clip(rng.normal(128, 40, (size, size)), 0, 255).astype(np.uint8)
        add(f"Gaussian noise {i + 1}", Image.fromarray(gauss))
    add("gradient", Image.fromarray(np.tile(np.linspace(0, 255, size, dtype=np.float32), (size, 1)).astype(np.uint8)))
    squares = (np.indices((size, size)) // max(1, size // 8)).sum(0) % 2
    add("checkerboard", Image.fromarray(np.uint8(255 * squares)))
    return out
