"""One source of truth for turning a radiograph into a model input.

Training, evaluation, the app and Grad-CAM all build their inputs through
:class:`PreprocessConfig` and the functions here; the config is saved with every checkpoint
(``config.json``), so a model is always fed the way it was trained.

The pipeline is::

    decode -> one luminance channel (uint8) -> resize to image_size x image_size
           -> [training only: horizontal flip, rotation up to +-10 degrees]
           -> float in [0, 1] -> replicate to the model's input channels -> (x - mean) / std

Example:
    >>> from PIL import Image
    >>> cfg = PreprocessConfig.create(image_size=64, in_chans=3, norm="radiography")
    >>> x = cfg.transform(Image.new("RGB", (300, 280), (128, 128, 128)))
    >>> tuple(x.shape)
    (3, 64, 64)
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from cxr.data.decode import ImageLike, load_grayscale, to_grayscale
from cxr.labels import CLASS_NAMES, NORMALIZATIONS

__all__ = [
    "PreprocessConfig",
    "to_grayscale",
    "load_grayscale",
    "resize_grayscale",
    "apply_clahe",
    "grayscale_to_tensor",
    "TrainAugmentation",
    "AUGMENTATIONS",
    "augmentation_settings",
]

_logger = logging.getLogger(__name__)

#: Bumped whenever the pixels this module produces change, so cached resized images are rebuilt
#: (2: one decoder, :mod:`cxr.data.decode`: DICOM files in a dataset decode; formats other than PNG/JPEG/DICOM are refused;
#: 3: images larger than the decoder's working size are reduced to it as they are decoded).
PREPROCESS_VERSION = 3


def apply_clahe(image: Image.Image, clip_limit: float = 2.0, tiles: int = 8) -> Image.Image:
    """Contrast-limited adaptive histogram equalisation (OpenCV) of a mode-``L`` image."""
    import cv2  # OpenCV loads only for CLAHE

    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles))
    return Image.fromarray(clahe.apply(np.asarray(image, dtype=np.uint8)), mode="L")


def resize_grayscale(image: Image.Image, size: int) -> np.ndarray:
    """Resize a mode-``L`` image to ``size x size`` (bilinear, antialiased) as a uint8 array."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def grayscale_to_tensor(
    pixels: Union[np.ndarray, torch.Tensor],
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Turn ``HxW`` (or ``1xHxW``, or a batch ``Bx1xHxW``) uint8 pixels into a normalised ``CxHxW`` (``BxCxHxW``)
    float tensor on the pixels' device.

    The grey channel is replicated to ``len(mean)`` channels, then each channel is normalised.
    """
    t = pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(np.array(pixels, dtype=np.uint8))
    if t.ndim == 2:
        t = t.unsqueeze(0)
    x = t.to(torch.float32).div_(255.0)
    x = x.expand(*x.shape[:-3], len(mean), -1, -1)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return (x - m) / s


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Everything needed to rebuild a model's input from a radiograph.

    Attributes:
        image_size: square side length fed to the model.
        in_chans: the model's input channels; the grey channel is replicated to this many.
        mean: per-channel mean (``in_chans`` values) subtracted after scaling to [0, 1].
        std: per-channel standard deviation (``in_chans`` values).
        norm: the name the mean/std came from (``radiography``, ``imagenet`` or ``model``).
        label_names: output class names, in the order of the model's logits.
        interpolation: resize filter (always ``bilinear``; recorded for other tools).
        version: :data:`PREPROCESS_VERSION` when the checkpoint was written.
        clahe: apply OpenCV's CLAHE (clip limit 2.0, 8x8 tiles) to the grey image before resizing
            (the study's dropped CLAHE arm).
    """

    image_size: int
    in_chans: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    norm: str = "model"
    label_names: Tuple[str, ...] = CLASS_NAMES
    interpolation: str = "bilinear"
    version: int = PREPROCESS_VERSION
    clahe: bool = False

    @classmethod
    def create(
        cls,
        image_size: int,
        in_chans: int,
        norm: str,
        model_mean: Optional[Sequence[float]] = None,
        model_std: Optional[Sequence[float]] = None,
        label_names: Sequence[str] = CLASS_NAMES,
        clahe: bool = False,
    ) -> "PreprocessConfig":
        """Resolve ``--norm`` into per-channel statistics for a model with ``in_chans`` inputs.

        Args:
            image_size: square input side.
            in_chans: model input channels.
            norm: ``radiography``, ``imagenet`` or ``model`` (then ``model_mean``/``model_std``).
            model_mean: the backbone's own mean (timm ``pretrained_cfg``), used for ``model``.
            model_std: the backbone's own std.
            label_names: class names in logit order.
            clahe: apply CLAHE before resizing.

        Returns:
            A frozen config.
        """
        if norm == "model":
            if model_mean is None or model_std is None:
                raise ValueError("norm='model' needs the backbone's mean and std")
            mean, std = tuple(model_mean), tuple(model_std)
        elif norm in NORMALIZATIONS:
            mean, std = NORMALIZATIONS[norm]
        else:
            raise ValueError(f"unknown norm {norm!r}; choose from model, {', '.join(NORMALIZATIONS)}")
        mean, std = _fit_channels(mean, in_chans), _fit_channels(std, in_chans)
        return cls(
            image_size=int(image_size),
            in_chans=int(in_chans),
            mean=mean,
            std=std,
            norm=norm,
            label_names=tuple(label_names),
            clahe=bool(clahe),
        )

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict (stored under ``"cxr"`` -> ``"preprocessing"`` in ``config.json``)."""
        d = dataclasses.asdict(self)
        d["mean"], d["std"], d["label_names"] = list(self.mean), list(self.std), list(self.label_names)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PreprocessConfig":
        """Inverse of :meth:`to_dict`; unknown keys are ignored for forward compatibility."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        for key in ("mean", "std", "label_names"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def timm_data_config(self) -> Dict[str, Any]:
        """The same preprocessing in timm's ``pretrained_cfg`` vocabulary (for ``save_for_hf``).

        ``crop_mode: squash`` with ``crop_pct: 1.0`` makes timm's eval transform (and so transformers'
        ``TimmWrapperImageProcessor``) resize the whole image to ``image_size`` x ``image_size`` with the
        same PIL filter, as :meth:`pixels` does, instead of resizing the short side and cropping.
        """
        return {
            "input_size": (self.in_chans, self.image_size, self.image_size),
            "mean": tuple(self.mean),
            "std": tuple(self.std),
            "interpolation": self.interpolation,
            "crop_pct": 1.0,
            "crop_mode": "squash",
        }

    @property
    def portable(self) -> bool:
        """Whether timm's and transformers' own preprocessing can reproduce this one (CLAHE: no)."""
        return not self.clahe

    def portability(self) -> Dict[str, Any]:
        """What other libraries reproduce of this preprocessing, stored in ``config.json`` (``cxr.portability``).

        Returns:
            ``{"timm": bool, "transformers": bool, "notes": [...]}``: where timm's eval transform and
            transformers' image processor give cxr's input, and the conditions that must hold.
        """
        notes = [
            "cxr converts every image to one 8-bit grey channel (ITU-R 601 luma) before resizing; timm and "
            "transformers resize the RGB channels as given: identical for grey radiographs (equal R, G and B), "
            "different for colour images unless they are converted to grey first (image.convert('L').convert('RGB')).",
            "16- and 32-bit images: cxr stretches their own minimum..maximum to 0..255; PIL's convert('RGB'), which "
            "transformers' pipeline applies to a path, clips them instead. Pass cxr.data.preprocessing.load_grayscale(path)"
            ".convert('RGB') to timm or transformers.",
        ]
        if self.clahe:
            notes.insert(
                0,
                "This model applies CLAHE (OpenCV) to the full-resolution grey image before resizing; "
                "neither timm nor transformers can apply it, so only cxr gives this model its input.",
            )
        return {"timm": self.portable, "transformers": self.portable, "notes": notes}

    def pixels(self, image: ImageLike) -> np.ndarray:
        """Decode, [CLAHE,] resize: the ``image_size x image_size`` uint8 grey array (cacheable)."""
        grey = load_grayscale(image)
        if self.clahe:
            grey = apply_clahe(grey)
        return resize_grayscale(grey, self.image_size)

    def normalize(self, pixels: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
        """Normalise cached/augmented uint8 pixels into the model's ``CxHxW`` input."""
        return grayscale_to_tensor(pixels, self.mean, self.std)

    def transform(self, image: ImageLike) -> torch.Tensor:
        """The evaluation transform: any image to the model's ``CxHxW`` float input."""
        return self.normalize(self.pixels(image))


def _fit_channels(values: Sequence[float], in_chans: int) -> Tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if in_chans == 1:
        return (float(np.mean(values)),)
    if len(values) == 1:
        return values * in_chans
    raise ValueError(f"cannot fit {len(values)} normalisation values to {in_chans} input channels")


#: ``--augment`` choices: the study's (flip, rotation), one for radiographs (adds small scale and shift,
#: brightness and contrast; never a vertical flip), and flip alone (the default).
AUGMENTATIONS = ("study", "radiograph", "flip")


def augmentation_settings(name: str) -> Dict[str, float]:
    """The settings of ``--augment NAME`` (:data:`AUGMENTATIONS`), shared by the loader's per-image path
    (:class:`TrainAugmentation`) and the batched one on the training device
    (:class:`~cxr.data.device_augment.DeviceAugmentation`).

    Raises:
        ValueError: an unknown name.
    """
    settings = {
        "study": dict(degrees=10.0, flip_p=0.5),
        "radiograph": dict(degrees=10.0, flip_p=0.5, translate=0.05, scale=0.1, brightness=0.2, contrast=0.2),
        "flip": dict(degrees=0.0, flip_p=0.5),
    }
    if name not in settings:
        raise ValueError(f"unknown augmentation {name!r}; choose from {', '.join(AUGMENTATIONS)}")
    return settings[name]


class TrainAugmentation:
    """Training augmentation on uint8 grey pixels: horizontal flip, rotation ±degrees and, optionally,
    small scale and translation and brightness/contrast changes. Never a vertical flip.

    Runs on the cached, already resized image (as the study augmented its 224x224 tensors), and
    draws from torch's global RNG, which Accelerate seeds per process and per worker.

    Args:
        degrees: maximum absolute rotation.
        flip_p: probability of a horizontal flip.
        translate: maximum shift as a fraction of the side (0: none).
        scale: maximum relative zoom in or out (0: none).
        brightness: maximum relative brightness change (0: none).
        contrast: maximum relative contrast change (0: none).
    """

    def __init__(
        self,
        degrees: float = 10.0,
        flip_p: float = 0.5,
        translate: float = 0.0,
        scale: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
    ):
        from torchvision.transforms import v2  # torchvision loads only when images are augmented

        self.params = dict(
            degrees=degrees, flip_p=flip_p, translate=translate, scale=scale, brightness=brightness, contrast=contrast
        )
        steps = [v2.RandomHorizontalFlip(p=flip_p)]
        if translate or scale:
            steps.append(
                v2.RandomAffine(
                    degrees=degrees,
                    translate=(translate, translate) if translate else None,
                    scale=(1 - scale, 1 + scale) if scale else None,
                    interpolation=v2.InterpolationMode.BILINEAR,
                    fill=0,
                )
            )
        elif degrees:
            steps.append(v2.RandomRotation(degrees=degrees, interpolation=v2.InterpolationMode.BILINEAR, fill=0))
        if brightness or contrast:
            steps.append(v2.ColorJitter(brightness=brightness or None, contrast=contrast or None))
        self._tf = v2.Compose(steps)

    @classmethod
    def named(cls, name: str) -> "TrainAugmentation":
        """The augmentation ``--augment NAME`` selects (:data:`AUGMENTATIONS`)."""
        return cls(**augmentation_settings(name))

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        """Augment ``HxW`` uint8 pixels; returns a ``1xHxW`` uint8 tensor."""
        return self._tf(torch.from_numpy(np.array(pixels, dtype=np.uint8)).unsqueeze(0))

    def __repr__(self) -> str:
        return "TrainAugmentation(" + ", ".join(f"{k}={v}" for k, v in self.params.items()) + ")"
