"""``CXRClassifier``: a trained model together with its preprocessing and label names.

The one loader the evaluation command and the app use. It takes a local model folder or a Hub
repository id, rebuilds the preprocessing saved with the checkpoint, and predicts class
probabilities by name. Research use only — not for diagnosis.

Example:
    >>> from cxr import CXRClassifier
    >>> clf = CXRClassifier.from_pretrained("runs/lite0/model")          # doctest: +SKIP
    >>> clf.predict("chest_xray.png")                                     # doctest: +SKIP
    {'COVID': 0.91, 'Lung_Opacity': 0.02, 'Normal': 0.05, 'Viral Pneumonia': 0.02}
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from cxr.data.preprocessing import ImageLike, PreprocessConfig
from cxr.labels import Classes
from cxr.metrics.operating_point import OperatingPoint, argmax_rule, decide
from cxr.models.checkpoint import load_model
from cxr.models.ood import OOD_MESSAGE, OODGuard, OutOfDistributionWarning, capture_features

__all__ = ["CXRClassifier", "temperature_softmax"]


def temperature_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(logits / temperature)`` in float32: the one way cxr turns logits into the probabilities it
    shows or returns (:meth:`CXRClassifier.probabilities`, ``cxr.eval``, training's reports)."""
    return (logits.float() / temperature).softmax(-1)


class CXRClassifier:
    """A chest X-ray classifier with the preprocessing it was trained with.

    Args:
        model: a timm classifier returning logits in ``preprocess.label_names`` order.
        preprocess: the checkpoint's :class:`PreprocessConfig`.
        config: the checkpoint's ``config.json``.
        source: where it was loaded from (folder or Hub id).
    """

    def __init__(
        self,
        model: nn.Module,
        preprocess: PreprocessConfig,
        config: Dict[str, Any],
        source: str,
        ood: Optional[OODGuard] = None,
    ):
        self.model = model.eval()
        self.preprocess = preprocess
        self.config = config
        self.source = source
        self.ood = ood
        #: Held by whatever puts hooks on :attr:`model` for a forward: a prediction (the guard's feature hooks)
        #: and a :class:`cxr.models.cam.CamSession` for its whole life (Grad-CAM's), so that no forward's records
        #: reach another's. A plain lock: a streamed request may release it from another thread.
        self.lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        ref: Union[str, os.PathLike],
        revision: Optional[str] = None,
        device: Union[str, torch.device] = "cpu",
    ) -> "CXRClassifier":
        """Load a cxr checkpoint from a local model folder or a Hub repository (``ORG/NAME``).

        Args:
            ref: model folder (``runs/x/model``) or Hub repository id.
            revision: Hub branch, tag or commit.
            device: where the model runs.

        Returns:
            The classifier, in eval mode.

        Raises:
            CXRError: not a cxr checkpoint, no safetensors weights, other label names, or the
                repository cannot be fetched — each named in the message.
        """
        model, prep, cfg = load_model(ref, revision=revision)
        return cls(model.to(device), prep, cfg, str(ref), OODGuard.load(ref, revision))

    @property
    def label_names(self) -> List[str]:
        """Class names in output order."""
        return list(self.preprocess.label_names)

    @property
    def classes(self) -> Classes:
        """The model's classes and the screening question asked of them (``label_names`` and ``cxr.screening``)."""
        return Classes.from_model_config(self.config)

    @property
    def site(self) -> Optional[Dict[str, Any]]:
        """Where the operating point was set again for another site (``cxr.recalibration``, written by
        ``cxr.calibrate``), else ``None``."""
        return self.config.get("cxr", {}).get("recalibration")

    @property
    def name(self) -> str:
        """The architecture's ``--model`` name."""
        return str(self.config.get("cxr", {}).get("model") or self.config.get("architecture"))

    @property
    def temperature(self) -> float:
        """The softmax temperature saved with the model (``config.json``'s ``cxr.temperature``), else 1.

        A temperature fitted on validation data calibrates the probabilities without changing the
        predicted class; every probability cxr shows or returns goes through it (:meth:`probabilities`).
        """
        return float(self.config.get("cxr", {}).get("temperature") or 1.0)

    @property
    def operating_point(self) -> Optional[OperatingPoint]:
        """The decision rule saved with the model (``config.json``'s ``cxr.operating_point``: the negative class only
        when its calibrated probability reaches a threshold chosen for the screening aim), or ``None`` when it has
        none (argmax)."""
        return OperatingPoint.from_config(self.config.get("cxr", {}).get("operating_point"), self.classes)

    @property
    def decision_rule(self) -> str:
        """The decision rule in words ("Normal only when P(Normal) ≥ 0.913"), or the argmax rule."""
        op = self.operating_point
        return argmax_rule(self.classes) if op is None else op.rule

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """Class indices by the saved decision rule from calibrated probabilities (``n x classes``); argmax for a
        model saved without an operating point."""
        op = self.operating_point
        return decide(probabilities, None if op is None else op.normal_threshold, self.classes)

    def decision(self, probabilities: Dict[str, float]) -> str:
        """The class the saved decision rule gives for one image's probabilities by name (:meth:`predict`)."""
        row = np.array([[probabilities[c] for c in self.label_names]])
        return self.label_names[int(self.decide(row)[0])]

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities from the model's logits: ``softmax(logits / temperature)``."""
        return temperature_softmax(logits, self.temperature)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def inputs(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Preprocess images (paths, PIL images or arrays) into a batch, exactly as in training."""
        return torch.stack([self.preprocess.transform(im) for im in images]).to(self.device)

    @torch.inference_mode()
    def predict_and_check(self, images: Sequence[ImageLike]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Calibrated class probabilities (``len(images) x classes``, in :attr:`label_names` order) and, from the same
        forward, which images the out-of-distribution guard flags as unlike the training X-rays (``None`` for a
        model saved without a guard)."""
        return self.predict_inputs(self.inputs(images))

    @torch.inference_mode()
    def predict_inputs(self, x: torch.Tensor) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """:meth:`predict_and_check` of a batch already preprocessed (:meth:`inputs`, or a loader applying
        :attr:`preprocess`'s transform)."""
        x = x.to(self.device)
        with self.lock, capture_features(self.model) as captured:
            probs = self.probabilities(self.model(x)).cpu().numpy()
        if self.ood is None or captured is None:
            return probs, None
        return probs, self.ood.flags(captured.take().cpu())

    def predict_proba(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Calibrated class probabilities, ``len(images) x classes``, in :attr:`label_names` order."""
        return self.predict_and_check(images)[0]

    def predict(self, image: ImageLike) -> Dict[str, float]:
        """Class probabilities of one image by class name; an :class:`~cxr.models.ood.OutOfDistributionWarning`
        when the image does not look like the chest X-rays the model was trained on."""
        probs, flagged = self.predict_and_check([image])
        if flagged is not None and flagged[0]:
            warnings.warn(OOD_MESSAGE, OutOfDistributionWarning, stacklevel=2)
        return dict(zip(self.label_names, map(float, probs[0])))

    def __repr__(self) -> str:
        return f"CXRClassifier({self.name!r} from {self.source!r}, {self.preprocess.image_size}px, norm {self.preprocess.norm})"
