"""What the page's events and API endpoints compute (:class:`PageHandlers`), from a
:class:`~cxr.app.board.ModelBoard`: the streamed analysis, ``/classify`` and ``/predict``'s answers, and the
uploads in use and forgotten. No Gradio component is made here; :mod:`cxr.app.page` lays them out and wires them.
Each model answers in its own classes; its column's decision line names its own rule, and says so when the class
chosen to explain is not one of its classes (its heat map then explains its predicted class). Research use only —
not for diagnosis.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from cxr.app.board import Analysis, DecodedUpload, ModelBoard, Upload, agreement_line, decision_rule
from cxr.app.examples import Example, ExampleFilms, KnownFilms
from cxr.app.gradio_internals import blocks_cache_folder
from cxr.app.kept import KeptImages
from cxr.app.upload_guard import StoredUploads
from cxr.labels import DISCLAIMER
from cxr.models.ood import OOD_MESSAGE

__all__ = ["PageHandlers", "PREDICTED", "NO_MODELS_LINE", "example_entry"]

_logger = logging.getLogger(__name__)

#: The "Explain" choice that explains each model's own predicted class.
PREDICTED = "predicted class"


NO_MODELS_LINE = (
    "this app was started without models: list Hub ids in app_models.txt or $CXR_APP_MODELS, "
    "or pass --models (the page says how)"
)


def _decision_line(m, probabilities: Optional[Dict[str, float]], cam_class: Optional[str] = None) -> str:
    """A model's decision for the page: the class its saved rule gives (research use only) and, when the class
    to explain is not one of its classes, that its heat map explains its predicted class."""
    if not probabilities or not m.available:
        return ""
    line = f"**Decision: {m.classifier.decision(probabilities)}** ({decision_rule(m.classifier)})"
    note = _cam_note(m, probabilities, cam_class)
    return f"{line}\n\n{note}" if note else line


def _cam_note(m, probabilities: Dict[str, float], cam_class: Optional[str]) -> str:
    """Why a model's heat map does not explain ``cam_class``: the model has no class of that name."""
    if cam_class is None or cam_class in probabilities:
        return ""
    predicted = max(probabilities, key=probabilities.get)
    return f"Grad-CAM: this model has no class {cam_class}; its heat map explains its predicted class, {predicted}."


def _cam_class(choice: Optional[str]) -> Optional[str]:
    """The class the "Explain" choice names, or ``None`` for each model's predicted class."""
    return None if not choice or choice == PREDICTED else str(choice)


def _status(a: Analysis, done: bool, example: Optional[Example] = None) -> str:
    if a.error:
        return f"**⚠ {a.error}**"
    lines = [example.description] if example else []
    lines += [f"**⚠ {w}**" for w in a.warnings]
    lines += [f"**⚠ {ref}: {OOD_MESSAGE}**" for ref, flagged in a.out_of_distribution.items() if flagged]
    lines += [f"{ref}: {err}" for ref, err in a.model_errors.items()]
    lines.append(f"*{DISCLAIMER}*" if done else f"*Computing heat maps… — {DISCLAIMER}*")
    return "\n\n".join(lines)


class PageHandlers:
    """What the page's events and API endpoints compute, from a :class:`ModelBoard`."""

    def __init__(self, board: ModelBoard, kept: KeptImages, uploads: StoredUploads):
        self.board, self.shown, self.kept = board, board.models, kept
        self.uploads = uploads  # the upload route's guard records each upload there; it deletes them
        self.demo = None  # the gr.Blocks (set by build_demo): its upload folder and the files it keeps
        self.examples = ExampleFilms(())  # set by build_demo
        self.known = KnownFilms({}, {})  # the models' own films, known by their bytes (set by build_demo)

    def example(self, path: Optional[str]) -> Optional[Example]:
        """The example film ``path`` holds (by content) or, when it is gone, was a copy of in Gradio's cache
        (by the folder Gradio names after the film's content; an upload of another film never matches)."""
        if path and not Path(path).is_file():
            return self.examples.copied_as(path) if self._in_cache(path) else None
        return self.examples.holding(path)

    def film(self, path: Optional[str]) -> Optional[Example]:
        """What the served models knew of the film ``path`` holds: the example it is or, for an upload, the
        models' own film its bytes are (:class:`KnownFilms`). Asked while the upload is there: it is deleted once
        analysed (the page keeps the answer with the image it keeps, :meth:`stream`)."""
        example = self.example(path)
        return example if example is not None else self.known.film(path)

    def _in_cache(self, path: str) -> bool:
        return self.demo is not None and blocks_cache_folder(self.demo) in Path(path).resolve().parents

    def load_example(self, index: int) -> str:
        """The film of the example clicked, for the upload component (Gradio copies it into its cache)."""
        return str(self.examples.films[index].path)

    @contextlib.contextmanager
    def using(self, path: Optional[str]) -> Iterator[None]:
        """Hold an upload while a request analyses it: the record of uploads deletes it once no request holds it
        and no other visitor's upload of the same film (the same path) waits (:class:`StoredUploads`), so it is
        never served back and nothing a visitor sent (a DICOM carries the patient's name) stays on disk. A path
        that is not an upload (an example's copy, an image the app sent out) is never deleted, whatever path a
        request names."""
        if not path:
            yield
            return
        self.uploads.claim(path)
        try:
            yield
        finally:
            self.uploads.release(path)

    def _upload(self, path: Optional[str], kept: Optional[Tuple[str, str]] = None) -> Upload:
        """What to analyse: the uploaded file or, once it has been deleted after its first analysis, the
        image this page decoded from it then (``kept``: the upload's path and its token in :class:`KeptImages`;
        when that image was dropped, the decoder asks for the film again); an example whose cached copy is gone
        (a cache emptied by hand) is read from its own film."""
        if path and kept is not None and kept[0] == str(path) and not Path(path).is_file():
            decoded = self.kept.get(kept[1])
            if decoded is not None:
                return decoded
        example = self.example(path) if path and not Path(path).is_file() else None
        return str(example.path) if example is not None else path

    def stream(self, image, cam_method, explain, kept=None):
        """Yield the page's outputs as they are ready; the last output is the decoded image the page keeps for
        another analysis of the same upload.

        Every step yields every output, unchanged ones included (Gradio re-encodes those images; its stream sends
        only what changed). ``gr.skip()`` would be cheaper but is a property update: Gradio then gives the
        session its own copy of that component, whose files — a heat map sent later — the cache sweep never
        sees (Gradio 6.31), so each visit would leave one behind for good.
        """
        last, shown_array = None, None
        with self.using(image):
            example = self.film(image)
            if example is None and kept is not None and kept[0] == str(image):
                example = kept[2]  # the page's upload, deleted after its first analysis: what it was, kept with it
            upload = self._upload(image, kept)
            again = isinstance(upload, DecodedUpload)  # the image this page kept: its token stays
            for a in self.board.analyse(upload, cam_method or "GradCAM", _cam_class(explain)):
                last = a
                if shown_array is None and a.shown is not None:
                    shown_array = _as_array(a.shown)
                    if image and a.decoded is not None and not again:
                        if kept is not None:
                            self.kept.drop(kept[1])  # the page's earlier upload: it shows this one now
                        kept = (str(image), self.kept.put(a.decoded), example)
                yield [*self._outputs(a, shown_array, False, example, _cam_class(explain)), kept]
        if last is not None:
            yield [*self._outputs(last, shown_array, True, example, _cam_class(explain)), kept]

    def analyse(self, image, cam_method, explain):
        """``/analyse`` for programs: what the page shows, streamed, without the image the page keeps."""
        for out in self.stream(image, cam_method, explain):
            yield out[:-1]

    def _outputs(
        self,
        a: Analysis,
        shown_array,
        done: bool,
        example: Optional[Example] = None,
        cam_class: Optional[str] = None,
    ) -> List[Any]:
        probabilities = [a.probabilities.get(m.ref) or None for m in self.shown]
        heatmaps = [a.heatmaps.get(m.ref) for m in self.shown]
        decisions = [_decision_line(m, a.probabilities.get(m.ref), cam_class) for m in self.shown]
        agreement = agreement_line(a.probabilities)
        return [_status(a, done, example), shown_array, *probabilities, *heatmaps, agreement, *decisions]

    def model_entries(self, final: Analysis, with_heatmaps: bool) -> Tuple[Dict[str, Any], List[Any]]:
        models, gallery = {}, []
        for m in self.shown:
            entry: Dict[str, Any] = {"available": m.available}
            if not m.available:
                entry["error"] = m.error
            elif m.ref in final.model_errors:
                entry["error"] = final.model_errors[m.ref]
            else:
                entry["temperature"] = m.classifier.temperature
                entry["decision_rule"] = decision_rule(m.classifier)
                entry["out_of_distribution"] = final.out_of_distribution.get(m.ref)
            probs = final.probabilities.get(m.ref)
            if probs:
                entry.update(
                    probabilities=probs, predicted=max(probs, key=probs.get), decision=m.classifier.decision(probs)
                )
            if with_heatmaps and m.ref in final.heatmaps:
                entry["explained"] = final.explained.get(m.ref)
                entry["heatmap_index"] = len(gallery)
                gallery.append((final.heatmaps[m.ref], m.ref))
            models[m.ref] = entry
        return models, gallery

    def _answer(self, final: Analysis, models: Dict[str, Any], film: Optional[Example], **extra: Any) -> Dict[str, Any]:
        return {
            "error": None,
            "warnings": final.warnings,
            **extra,
            "example": example_entry(film) if film is not None and film.offered else None,
            "known_film": example_entry(film) if film is not None and not film.offered else None,
            "agreement": agreement_line(final.probabilities),
            "models": models,
            "disclaimer": DISCLAIMER,
        }

    def classify(self, image) -> Dict[str, Any]:
        """Every model's calibrated probabilities for one chest X-ray, without Grad-CAM (fast)."""
        with self.using(image):
            if not self.shown:
                return {"error": NO_MODELS_LINE, "disclaimer": DISCLAIMER}
            film = self.film(image)  # while the upload is there: it is deleted once analysed
            final = self.board.classify(self._upload(image))
        if final.error:
            return {"error": final.error, "disclaimer": DISCLAIMER}
        return self._answer(final, self.model_entries(final, with_heatmaps=False)[0], film)

    def predict(self, image, cam_method="GradCAM", explain=PREDICTED) -> Tuple[Dict[str, Any], List[Any]]:
        """Every model's probabilities (JSON) and heat maps (gallery, one per model, captioned by model)."""
        final = None
        with self.using(image):
            film = self.film(image)  # while the upload is there: it is deleted once analysed
            for final in self.board.analyse(self._upload(image), cam_method or "GradCAM", _cam_class(explain)):  # noqa: B007
                pass
        if not self.shown:
            final.error = NO_MODELS_LINE
        if final.error:
            return {"error": final.error, "disclaimer": DISCLAIMER}, []
        models, gallery = self.model_entries(final, with_heatmaps=True)
        return self._answer(final, models, film, shown_size=list(final.shown.size)), gallery


def example_entry(e: Example) -> Dict[str, Any]:
    return {
        "file_name": e.file_name,
        "true_class": e.true_class,
        "held_out": e.held_out,
        "tested_by": list(e.tested),
        "never_seen_by": list(e.unseen),
        "trained_on_by": list(e.seen),
        "split_unknown_for": list(e.unknown),
    }


def _as_array(image):
    return np.asarray(image)
