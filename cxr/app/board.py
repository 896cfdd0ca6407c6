"""What the Gradio app computes, independent of Gradio: models on show, predictions, heat maps.

:class:`ModelBoard` loads every listed model (Hub ids and local folders, in parallel); a model that
cannot be loaded stays on the board as unavailable with its reason. :meth:`ModelBoard.analyse`
streams a request's results: first every model's probabilities, then each heat map as it is
ready. Research use only — not for diagnosis.

Example:
    >>> board = ModelBoard.load(["runs/lite0/model", "org/missing"])      # doctest: +SKIP
    >>> [m.available for m in board.models]                              # doctest: +SKIP
    [True, False]
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
from PIL import Image

from cxr.data.decode import read_radiograph
from cxr.data.preprocessing import to_grayscale
from cxr.errors import CXRError
from cxr.labels import CLASS_NAMES
from cxr.locations import is_hub_id
from cxr.models.cam import CamSession, overlay_heatmap
from cxr.models.classifier import CXRClassifier
from cxr.run_folder import RunFolder

__all__ = [
    "DISPLAY_SIDE",
    "ShownModel",
    "ModelBoard",
    "Analysis",
    "DecodedUpload",
    "Upload",
    "resolve_model_refs",
    "agreement_line",
]

_logger = logging.getLogger(__name__)

#: Longest side of the image shown on the page (and of every heat map).
DISPLAY_SIDE = 512
MODELS_FILE = "app_models.txt"


def resolve_model_refs(arg: Optional[str] = None, root: Path = Path(".")) -> List[str]:
    """The models to show: ``--models`` (comma-separated), else ``$CXR_APP_MODELS``, else the lines of
    ``app_models.txt``, else every ``runs/*/model`` folder."""
    text = arg or os.environ.get("CXR_APP_MODELS")
    if not text and (root / MODELS_FILE).is_file():
        lines = [ln.split("#")[0].strip() for ln in (root / MODELS_FILE).read_text().splitlines()]
        text = ",".join(ln for ln in lines if ln)
    if text:
        return [r.strip() for r in text.split(",") if r.strip()]
    runs = (RunFolder(p) for p in sorted((root / "runs").iterdir())) if (root / "runs").is_dir() else ()
    return [str(r.model_dir) for r in runs if r.model_config.is_file()]


@dataclasses.dataclass
class ShownModel:
    """One column of the app.

    Attributes:
        ref: the Hub id or folder it was loaded from.
        classifier: the loaded model, or ``None``.
        error: why it could not be loaded.
    """

    ref: str
    classifier: Optional[CXRClassifier] = None
    error: Optional[str] = None

    @property
    def available(self) -> bool:
        return self.classifier is not None

    @property
    def title(self) -> str:
        name = self.classifier.name if self.classifier else "unavailable"
        return f"{name} · {self.ref}"

    @property
    def card_url(self) -> Optional[str]:
        """The model card: the Hub page for Hub ids, ``None`` for local folders."""
        if not is_hub_id(self.ref):
            return None
        from huggingface_hub import constants  # the Hub client loads only for a Hub id

        return f"{constants.ENDPOINT}/{self.ref}"


@dataclasses.dataclass(frozen=True)
class DecodedUpload:
    """An upload once decoded: the grey working image and its warnings (what a page keeps, not the file)."""

    image: Image.Image
    warnings: List[str]


#: What :meth:`ModelBoard.analyse` and :meth:`ModelBoard.classify` take: the uploaded file (``None`` for an
#: empty submit) or an upload decoded before.
Upload = Union[str, os.PathLike, None, DecodedUpload]


@dataclasses.dataclass
class Analysis:
    """A request's state as it streams: filled in by :meth:`ModelBoard.analyse`."""

    decoded: Optional[DecodedUpload] = None
    shown: Optional[Image.Image] = None
    warnings: List[str] = dataclasses.field(default_factory=list)
    error: Optional[str] = None
    probabilities: Dict[str, Optional[Dict[str, float]]] = dataclasses.field(default_factory=dict)
    #: per model: its out-of-distribution guard flagged the image (``None``: a model saved without a guard)
    out_of_distribution: Dict[str, Optional[bool]] = dataclasses.field(default_factory=dict)
    heatmaps: Dict[str, Optional[np.ndarray]] = dataclasses.field(default_factory=dict)
    model_errors: Dict[str, str] = dataclasses.field(default_factory=dict)


def agreement_line(probabilities: Dict[str, Optional[Dict[str, float]]]) -> str:
    """One sentence saying whether the models agree on the top class."""
    tops = {ref: max(p, key=p.get) for ref, p in probabilities.items() if p}
    if not tops:
        return ""
    classes = set(tops.values())
    if len(tops) == 1:
        return f"One model: it predicts **{next(iter(classes))}**."
    if len(classes) == 1:
        return f"All {len(tops)} models agree: **{next(iter(classes))}**."
    counts = {c: sum(1 for t in tops.values() if t == c) for c in classes}
    parts = ", ".join(f"{n} say **{c}**" for c, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"The models disagree: {parts}."


class ModelBoard:
    """The models on show and the computations behind one request."""

    def __init__(self, models: Sequence[ShownModel]):
        self.models = list(models)

    @classmethod
    def load(cls, refs: Sequence[str], device: str = "cpu") -> "ModelBoard":
        """Load every model in parallel; failures are kept with their reason."""

        def one(ref: str) -> ShownModel:
            try:
                return ShownModel(ref, CXRClassifier.from_pretrained(ref, device=device))
            except CXRError as e:
                return ShownModel(ref, error=str(e))
            except Exception as e:  # a broken checkpoint must not take the app down
                _logger.exception("could not load %s", ref)
                return ShownModel(ref, error=f"{type(e).__name__}: {e}")

        with ThreadPoolExecutor(max_workers=max(1, min(4, len(refs)))) as pool:
            return cls(list(pool.map(one, refs)))

    @property
    def available(self) -> List[ShownModel]:
        return [m for m in self.models if m.available]

    @staticmethod
    def shown_image(image: Image.Image) -> Image.Image:
        """The grey image as displayed (longest side at most :data:`DISPLAY_SIDE`)."""
        grey = to_grayscale(image).copy()
        grey.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.BILINEAR)
        return grey

    @staticmethod
    def _read(upload: Upload, result: Analysis) -> Optional[Image.Image]:
        """Decode an upload (unless it was decoded before), recording it and its warnings in ``result``; a bad
        one sets ``result.error`` and gives ``None``."""
        if not isinstance(upload, DecodedUpload):
            try:
                upload = DecodedUpload(*read_radiograph(upload))
            except CXRError as e:
                result.error = str(e)
                return None
        result.decoded, result.warnings = upload, list(upload.warnings)
        return upload.image

    def classify(self, path: Upload) -> Analysis:
        """Every model's calibrated probabilities for one upload, without Grad-CAM (the fast path).

        Args:
            path: the uploaded file, or an upload decoded before.

        Returns:
            An :class:`Analysis` with ``probabilities`` (and ``model_errors``) filled in, or with
            ``error`` set for a bad upload.
        """
        result = Analysis()
        image = self._read(path, result)
        if image is None:
            return result
        for m in self.available:
            try:
                # waits for a concurrent request's Grad-CAM session on the same model (the classifier's lock)
                probs, flags = m.classifier.predict_and_check([image])
                result.probabilities[m.ref] = dict(zip(m.classifier.label_names, map(float, probs[0])))
                result.out_of_distribution[m.ref] = None if flags is None else bool(flags[0])
            except Exception as e:
                _logger.exception("prediction failed for %s", m.ref)
                result.model_errors[m.ref] = f"prediction failed: {type(e).__name__}: {e}"
        return result

    def analyse(self, path: Upload, method: str = "GradCAM", cam_class: Optional[str] = None) -> Iterator[Analysis]:
        """Stream a request: yields after decoding, after all probabilities, then after each heat map.

        Args:
            path: the uploaded file, or an upload decoded before.
            method: Grad-CAM method.
            cam_class: class to explain, or ``None`` for each model's predicted class.

        Yields:
            The same :class:`Analysis`, more complete each time. A bad upload yields one analysis
            with ``error`` set.
        """
        result = Analysis()
        image = self._read(path, result)
        if image is None:
            yield result
            return
        result.shown = self.shown_image(image)
        class_index = CLASS_NAMES.index(cam_class) if cam_class in CLASS_NAMES else None
        models = self.available
        with contextlib.ExitStack() as stack:
            sessions = {}
            # one forward per model: its probabilities now, its heat map below; each session holds its model
            # (the classifier's lock) until the request ends, and they are opened in the board's fixed order
            for m in models:
                try:
                    sessions[m.ref] = stack.enter_context(CamSession(m.classifier, method))
                    probs = sessions[m.ref].probabilities(image)
                    result.probabilities[m.ref] = dict(zip(m.classifier.label_names, map(float, probs)))
                    result.out_of_distribution[m.ref] = sessions[m.ref].out_of_distribution
                except Exception as e:
                    _logger.exception("prediction failed for %s", m.ref)
                    result.model_errors[m.ref] = f"prediction failed: {type(e).__name__}: {e}"
            yield result
            for m in models:
                if m.ref in result.model_errors:
                    continue
                try:
                    result.heatmaps[m.ref] = overlay_heatmap(result.shown, sessions[m.ref].heatmap(class_index))
                except Exception as e:
                    _logger.exception("Grad-CAM failed for %s", m.ref)
                    result.model_errors[m.ref] = f"heat map failed: {type(e).__name__}: {e}"
                yield result
