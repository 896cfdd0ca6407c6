"""What the Gradio app computes, independent of Gradio: models on show, predictions, heat maps.

:class:`ModelBoard` loads every listed model (Hub ids and local folders, in parallel); a model that
cannot be loaded stays on the board as unavailable with its reason. :meth:`ModelBoard.analyse`
streams a request's results: first every model's probabilities, then each heat map as it is
ready. Each model has its own classes (:attr:`CXRClassifier.classes`); the board offers the union of them
(:attr:`ModelBoard.class_names`), a class a model does not have is never asked of it (its heat map explains its
predicted class instead), and models are compared by class name only. Research use only — not for diagnosis.

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
    "cam_class_index",
    "decision_rule",
    "site_line",
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
    #: per model: the class its heat map explains (the class asked for, or its predicted class when it has no
    #: class of that name)
    explained: Dict[str, str] = dataclasses.field(default_factory=dict)
    model_errors: Dict[str, str] = dataclasses.field(default_factory=dict)


def agreement_line(probabilities: Dict[str, Optional[Dict[str, float]]]) -> str:
    """One sentence saying whether the models agree on the top class.

    Each model's probabilities are by its own class names. Models of different class sets are compared by the
    name of their top class only, and the sentence says so (and which of the classes named some model does not
    have).
    """
    shown = {ref: p for ref, p in probabilities.items() if p}
    tops = {ref: max(p, key=p.get) for ref, p in shown.items()}
    if not tops:
        return ""
    classes = list(dict.fromkeys(tops.values()))  # first-seen order: the sentence does not change run to run
    if len(tops) == 1:
        return f"One model: it predicts **{classes[0]}**."
    mixed = len({frozenset(p) for p in shown.values()}) > 1
    note = " (the models have different classes: only class names are compared)" if mixed else ""
    if len(classes) == 1:
        return f"All {len(tops)} models agree: **{classes[0]}**{note}."
    counts = {c: sum(1 for t in tops.values() if t == c) for c in classes}
    parts = ", ".join(f"{n} say **{c}**" for c, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    if mixed:
        lacking = [c for c in classes if any(c not in p for p in shown.values())]
        if lacking:
            verb = "is" if len(lacking) == 1 else "are"
            note = (
                f" (the models have different classes: only class names are compared; "
                f"{' and '.join(lacking)} {verb} not a class of every model)"
            )
    return f"The models disagree: {parts}{note}."


def cam_class_index(classifier: CXRClassifier, cam_class: Optional[str]) -> Optional[int]:
    """The output index of class ``cam_class`` in ``classifier``'s classes, or ``None`` (its predicted class)
    when ``cam_class`` is ``None`` or not one of them."""
    names = classifier.label_names
    return names.index(cam_class) if cam_class in names else None


def decision_rule(classifier: CXRClassifier) -> str:
    """A model's decision rule as its column says it: its operating point on its own negative class ("Normal
    only when P(Normal) ≥ 0.913"), "argmax" for a model without a negative class."""
    if classifier.classes.negative is None:
        return "argmax: the model has no negative class, so no screening decision"
    return classifier.decision_rule


def site_line(classifier: CXRClassifier) -> Optional[str]:
    """For a model whose operating point was set again at another site (:attr:`CXRClassifier.site`), one line
    saying where and what it guarantees there; ``None`` for any other model."""
    site = classifier.site
    if not site:
        return None
    where = site.get("site") or "another site"
    films = "" if site.get("films") is None else f" ({site['films']} films)"
    guarantee = site.get("guarantee_sentence") or "no finite-sample guarantee recorded."
    return f"Operating point set for {where}{films}: {guarantee}"


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

    @property
    def class_names(self) -> List[str]:
        """Every class of the available models, each once, in the order the models and their outputs first name
        it (the database's four for models trained on it)."""
        return list(dict.fromkeys(c for m in self.available for c in m.classifier.label_names))

    @property
    def same_classes(self) -> bool:
        """Whether the available models all have the same classes (in any order)."""
        return len({frozenset(m.classifier.label_names) for m in self.available}) <= 1

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
            cam_class: class to explain by name, or ``None`` for each model's predicted class; a model without a
                class of that name explains its predicted class (``Analysis.explained`` says which).

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
                    index = cam_class_index(m.classifier, cam_class)
                    probs = result.probabilities[m.ref]
                    result.explained[m.ref] = cam_class if index is not None else max(probs, key=probs.get)
                    result.heatmaps[m.ref] = overlay_heatmap(result.shown, sessions[m.ref].heatmap(index))
                except Exception as e:
                    _logger.exception("Grad-CAM failed for %s", m.ref)
                    result.model_errors[m.ref] = f"heat map failed: {type(e).__name__}: {e}"
                yield result
