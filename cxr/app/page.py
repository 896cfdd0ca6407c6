"""The Gradio page: one column per model — prediction, probabilities, Grad-CAM — side by side.

:func:`build_demo` lays out a :class:`~cxr.app.board.ModelBoard`. The page's event streams (all
probabilities first, heat maps as they are ready); the ``/predict`` API endpoint returns every
model's probabilities (JSON) and heat maps (a gallery) in one answer for ``gradio_client``.
Research use only — not for diagnosis.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from cxr.app.board import Analysis, DecodedUpload, ModelBoard, Upload, agreement_line
from cxr.app.examples import Example, ExampleFilms
from cxr.app.kept import KeptImages
from cxr.app.upload_guard import StoredUploads
from cxr.data.decode import UPLOAD_SUFFIXES
from cxr.labels import CLASS_NAMES, DISCLAIMER
from cxr.models.cam import CAM_METHODS
from cxr.models.ood import OOD_MESSAGE

__all__ = [
    "build_demo",
    "PREDICTED",
    "UPLOAD_TYPES",
    "NO_MODELS",
    "KEPT_IMAGE_SECONDS",
    "KEPT_IMAGES_MB",
    "CACHE_SWEEP",
    "SERVER_QUEUE",
]

_logger = logging.getLogger(__name__)

PREDICTED = "predicted class"
UPLOAD_TYPES = list(UPLOAD_SUFFIXES)
#: An upload is deleted from the server once analysed; the page keeps the decoded grey image (never the file)
#: this long after its last use, so "Analyse" can run again with other settings.
KEPT_IMAGE_SECONDS = 900
#: Megabytes of those decoded images kept for every page together (``app.py --kept-images``); a working image is
#: at most 2048² grey, 4 MB.
KEPT_IMAGES_MB = 200
#: Gradio's cache sweep, (every, older than) in seconds: what was not deleted at once — the heat map images
#: sent, the copies of examples clicked — goes on this schedule (a click on an example copies its film again);
#: ``app.py --cache-sweep`` sets other ages. An upload never analysed goes sooner (``app.py --upload-wait``).
CACHE_SWEEP = (300, 900)
#: The one queue every analysing event joins — the page's, ``/analyse``, ``/classify``, ``/predict`` — so the
#: queue's concurrency limit (``app.py --concurrency``) bounds the server's work, not each endpoint's.
SERVER_QUEUE = "cxr-server"

_INTRO = f"""# Chest X-ray classifiers, side by side

**{DISCLAIMER}** Upload a frontal chest X-ray (PNG, JPEG or DICOM): every model below gives its four
class probabilities and a Grad-CAM heat map of where it looked. These models were trained on a
database whose classes come from different hospitals and age groups, so they can answer from the
source of an image rather than from disease."""


#: Shown instead of model columns when the app has no model to show (a fresh Space, a fresh checkout).
NO_MODELS = """## No models to show yet

This app shows chest X-ray classifiers trained with `cxr`, side by side. It was started without any:

- **A Hugging Face Space:** list the published model ids in the Space's `app_models.txt`, one per line (or
  set the Space variable `CXR_APP_MODELS` to `ORG/model1,ORG/model2`), then restart the Space.
  `python -m cxr.hub space ORG/NAME --models ORG/model1,ORG/model2` deploys a Space with its models listed.
- **Your machine:** `python app.py --models ORG/NAME,runs/NAME/model` (Hub ids or model folders), or
  `python app.py --quickstart DATA` to fine-tune two models (EfficientNet-Lite0 and the pixel baseline) on a
  Kaggle-layout folder first (offline).
- **A model of your own:** `accelerate launch train_accelerate.py --model resnet50 --data DATA --output-dir
  runs/resnet50` writes `runs/resnet50/model`, which the app shows when started from that folder.
"""


NO_MODELS_LINE = (
    "this app was started without models: list Hub ids in app_models.txt or $CXR_APP_MODELS, "
    "or pass --models (the page says how)"
)


def _model_header(m) -> str:
    if not m.available:
        return f"### ⚠ {m.ref}\n\nUnavailable: {m.error}"
    name = f"[{m.title}]({m.card_url})" if m.card_url else m.title
    prep = m.classifier.preprocess
    return f"### {name}\n\n{prep.image_size}px, norm {prep.norm}. Decision: {m.classifier.decision_rule}"


def _decision_line(m, probabilities: Optional[Dict[str, float]]) -> str:
    """A model's decision for the page: the class its saved rule gives (research use only)."""
    if not probabilities or not m.available:
        return ""
    return f"**Decision: {m.classifier.decision(probabilities)}** ({m.classifier.decision_rule})"


def _cam_class(choice: Optional[str]) -> Optional[str]:
    return choice if choice in CLASS_NAMES else None


def _status(a: Analysis, done: bool, example: Optional[Example] = None) -> str:
    if a.error:
        return f"**⚠ {a.error}**"
    lines = [example.description] if example else []
    lines += [f"**⚠ {w}**" for w in a.warnings]
    lines += [f"**⚠ {ref}: {OOD_MESSAGE}**" for ref, flagged in a.out_of_distribution.items() if flagged]
    lines += [f"{ref}: {err}" for ref, err in a.model_errors.items()]
    lines.append(f"*{DISCLAIMER}*" if done else f"*Computing heat maps… — {DISCLAIMER}*")
    return "\n\n".join(lines)


@dataclasses.dataclass
class _Components:
    """The page's Gradio components that events read and write."""

    upload: Any
    method: Any
    cam_class: Any
    run: Any
    image: Any
    status: Any
    labels: List[Any]
    heatmaps: List[Any]
    agreement: Any
    decisions: List[Any]
    examples: Any = None  # the examples' table (a gr.Dataset), when there are examples

    @property
    def outputs(self) -> List[Any]:
        return [self.status, self.image, *self.labels, *self.heatmaps, self.agreement, *self.decisions]


class _Handlers:
    """What the page's events and API endpoints compute, from a :class:`ModelBoard`."""

    def __init__(self, board: ModelBoard, kept: KeptImages, uploads: Optional[StoredUploads] = None):
        self.board, self.shown, self.kept, self.uploads = board, board.models, kept, uploads
        self.demo = None  # the gr.Blocks (set by build_demo): its upload folder and the files it keeps
        self.examples = ExampleFilms(())  # set by build_demo
        self._in_use: collections.Counter = collections.Counter()  # uploads being analysed, by path
        self._lock = threading.Lock()

    def example(self, path: Optional[str]) -> Optional[Example]:
        """The example film ``path`` holds (by content) or, when it is gone, was a copy of in Gradio's cache
        (by the folder Gradio names after the film's content; an upload of another film never matches)."""
        if path and not Path(path).is_file():
            return self.examples.copied_as(path) if self._in_cache(path) else None
        return self.examples.holding(path)

    def _in_cache(self, path: str) -> bool:
        return self.demo is not None and Path(self.demo.GRADIO_CACHE).resolve() in Path(path).resolve().parents

    def load_example(self, index: int) -> str:
        """The film of the example clicked, for the upload component (Gradio copies it into its cache)."""
        return str(self.examples.films[index].path)

    @contextlib.contextmanager
    def using(self, path: Optional[str]) -> Iterator[None]:
        """Hold an upload while a request analyses it; when the last request holding it ends, delete it
        (:meth:`forget`)."""
        key = str(Path(path).resolve()) if path else None  # one count per file, however a request spells it
        if key and self.uploads is not None:
            self.uploads.claim(key)  # analysed now: deleted when the last request holding it ends, not expired
        with self._lock:
            self._in_use[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_use[key] -= 1
                last = self._in_use[key] == 0
                if last:
                    del self._in_use[key]
                    self.forget(path)

    def forget(self, path: Optional[str]) -> None:
        """Delete an analysed upload from the server, so it is never served back and nothing a visitor sent
        (a DICOM carries the patient's name) stays on disk. Only files that arrived through Gradio's upload
        route are deleted — never an example's copy or an image the app sent out, whatever path a request
        names."""
        if not path or self.demo is None:
            return
        file, root = Path(path).resolve(), Path(self.demo.GRADIO_CACHE).resolve()
        uploads = self.demo.upload_file_set.copy()  # Gradio's threads add to it (and sweep it) meanwhile
        spelled = next((p for p in (str(path), str(file)) if p in uploads), None)
        if root not in file.parents or spelled is None or not file.is_file():
            return
        if self.examples.holding(file) is not None:  # the same bytes as an example: perhaps its cached copy
            return
        with contextlib.suppress(OSError):
            file.unlink()
            self.demo.upload_file_set.discard(spelled)
            file.parent.rmdir()  # the upload's own folder, now empty

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
        last, shown_array, example = None, None, self.example(image)
        with self.using(image):
            upload = self._upload(image, kept)
            again = isinstance(upload, DecodedUpload)  # the image this page kept: its token stays
            for a in self.board.analyse(upload, cam_method or "GradCAM", _cam_class(explain)):
                last = a
                if shown_array is None and a.shown is not None:
                    shown_array = _as_array(a.shown)
                    if image and a.decoded is not None and not again:
                        if kept is not None:
                            self.kept.drop(kept[1])  # the page's earlier upload: it shows this one now
                        kept = (str(image), self.kept.put(a.decoded))
                yield [*self._outputs(a, shown_array, done=False, example=example), kept]
        if last is not None:
            yield [*self._outputs(last, shown_array, done=True, example=example), kept]

    def analyse(self, image, cam_method, explain):
        """``/analyse`` for programs: what the page shows, streamed, without the image the page keeps."""
        for out in self.stream(image, cam_method, explain):
            yield out[:-1]

    def _outputs(self, a: Analysis, shown_array, done: bool, example: Optional[Example] = None) -> List[Any]:
        probabilities = [a.probabilities.get(m.ref) or None for m in self.shown]
        heatmaps = [a.heatmaps.get(m.ref) for m in self.shown]
        decisions = [_decision_line(m, a.probabilities.get(m.ref)) for m in self.shown]
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
                entry["decision_rule"] = m.classifier.decision_rule
                entry["out_of_distribution"] = final.out_of_distribution.get(m.ref)
            probs = final.probabilities.get(m.ref)
            if probs:
                entry.update(
                    probabilities=probs, predicted=max(probs, key=probs.get), decision=m.classifier.decision(probs)
                )
            if with_heatmaps and m.ref in final.heatmaps:
                entry["heatmap_index"] = len(gallery)
                gallery.append((final.heatmaps[m.ref], m.ref))
            models[m.ref] = entry
        return models, gallery

    def _answer(self, final: Analysis, models: Dict[str, Any], image: Optional[str], **extra: Any) -> Dict[str, Any]:
        example = self.example(image)
        return {
            "error": None,
            "warnings": final.warnings,
            **extra,
            "example": None if example is None else _example_entry(example),
            "agreement": agreement_line(final.probabilities),
            "models": models,
            "disclaimer": DISCLAIMER,
        }

    def classify(self, image) -> Dict[str, Any]:
        """Every model's calibrated probabilities for one chest X-ray, without Grad-CAM (fast)."""
        with self.using(image):
            if not self.shown:
                return {"error": NO_MODELS_LINE, "disclaimer": DISCLAIMER}
            final = self.board.classify(self._upload(image))
        if final.error:
            return {"error": final.error, "disclaimer": DISCLAIMER}
        return self._answer(final, self.model_entries(final, with_heatmaps=False)[0], image)

    def predict(self, image, cam_method="GradCAM", explain=PREDICTED) -> Tuple[Dict[str, Any], List[Any]]:
        """Every model's probabilities (JSON) and heat maps (gallery, one per model, captioned by model)."""
        final = None
        with self.using(image):
            for final in self.board.analyse(self._upload(image), cam_method or "GradCAM", _cam_class(explain)):  # noqa: B007
                pass
        if not self.shown:
            final.error = NO_MODELS_LINE
        if final.error:
            return {"error": final.error, "disclaimer": DISCLAIMER}, []
        models, gallery = self.model_entries(final, with_heatmaps=True)
        return self._answer(final, models, image, shown_size=list(final.shown.size)), gallery


def _upload_box(**kwargs: Any) -> Any:
    """A ``gr.File`` (one file, as a path) whose events hand the handler the stored upload's path, creating
    nothing.

    ``gr.File(type="filepath")`` also creates an empty file in Gradio's cache on every event it is an input of
    and never removes it (Gradio 6.31, ``File._process_single_file``); the cache sweep does not see those files,
    so a server that runs for days would gather one per request. The component keeps its class (the page and the
    API see a ``File``; a subclass would make Gradio write a ``.pyi`` stub beside this module) and gets its own
    ``preprocess``.
    """
    import gradio as gr
    from gradio_client.utils import is_valid_file

    box = gr.File(file_count="single", type="filepath", **kwargs)

    def preprocess(payload: Any) -> Optional[str]:
        if payload is None:
            return None
        if box.file_types and not is_valid_file(payload.path, box.file_types):
            raise gr.Error(f"Invalid file type: upload one of {', '.join(box.file_types)}")
        return str(payload.path)

    box.preprocess = preprocess
    return box


def _layout(board: ModelBoard, examples: Sequence[Example] = ()) -> _Components:
    """The visible page: the upload, the examples under it, the options, the image as analysed, one column per
    model."""
    import gradio as gr

    shown = board.models
    gr.Markdown(_INTRO)
    if not shown:
        gr.Markdown(NO_MODELS, elem_id="no-models")
    with gr.Row():
        with gr.Column(scale=1):
            upload = _upload_box(label="Chest X-ray (PNG, JPEG or DICOM)", file_types=UPLOAD_TYPES, elem_id="upload")
            table = None
            if examples:
                table = gr.Dataset(
                    components=[gr.Textbox(visible=False)],
                    samples=[[e.caption] for e in examples],
                    type="index",
                    label="Examples: films with their true class (click one, then Analyse)",
                    elem_id="examples",
                )
                seen = [f"⚠ {e.description}" for e in examples if e.seen]
                if seen:
                    gr.Markdown("\n\n".join(seen), elem_id="example-notes")
            method = gr.Dropdown(CAM_METHODS, value="GradCAM", label="Grad-CAM method")
            cam_class = gr.Dropdown([PREDICTED, *CLASS_NAMES], value=PREDICTED, label="Explain")
            run = gr.Button("Analyse", variant="primary", interactive=bool(shown))
        with gr.Column(scale=1):
            image = gr.Image(label="Image as analysed (grey)", type="numpy", interactive=False, height=320)
    status = gr.Markdown(f"*{DISCLAIMER}*", elem_id="status", label="Status")
    labels, heatmaps, decisions = [], [], []
    with gr.Row(equal_height=False):
        for i, m in enumerate(shown):
            with gr.Column(min_width=220, elem_id=f"model-{i}", elem_classes=["model-column"]):
                gr.Markdown(_model_header(m))
                decisions.append(gr.Markdown("", elem_id=f"decision-{i}", label=f"Decision · {m.ref}"))
                labels.append(gr.Label(num_top_classes=4, label=f"Probabilities · {m.ref}", elem_id=f"label-{i}"))
                heatmaps.append(
                    gr.Image(
                        label=f"Grad-CAM · {m.ref}", type="numpy", interactive=False, elem_id=f"heatmap-{i}", height=260
                    )
                )
    agreement = gr.Markdown("", elem_id="agreement", label="Agreement")
    return _Components(upload, method, cam_class, run, image, status, labels, heatmaps, agreement, decisions, table)


def build_demo(
    board: ModelBoard,
    examples: Sequence[Example] = (),
    cache_sweep: Tuple[int, int] = CACHE_SWEEP,
    kept_images: Optional[KeptImages] = None,
    uploads: Optional[StoredUploads] = None,
):
    """Build the ``gr.Blocks`` page for ``board``: the layout, the streamed page event, and the ``/analyse``,
    ``/classify`` and ``/predict`` API endpoints.

    Args:
        board: the loaded models (unavailable ones are shown with their reason).
        examples: films offered as clickable examples (:func:`cxr.app.examples.choose_examples`), each captioned
            with its true class and whether the models held it out; one a model trained on gets a note on the page.
        cache_sweep: Gradio's cache sweep, (every, older than) in seconds (:data:`CACHE_SWEEP`).
        kept_images: where pages keep decoded uploads to analyse again (default: :data:`KEPT_IMAGES_MB` for
            :data:`KEPT_IMAGE_SECONDS`).
        uploads: the upload route's record of uploads not yet analysed (:class:`StoredUploads`): a request
            analysing one claims it, so it is not expired meanwhile.

    Returns:
        The unlaunched ``gr.Blocks``.
    """
    import gradio as gr

    if kept_images is None:  # (an empty store is falsy: it has a length)
        kept_images = KeptImages(KEPT_IMAGES_MB << 20, KEPT_IMAGE_SECONDS)
    handlers = _Handlers(board, kept_images, uploads)
    with gr.Blocks(title="cxr — chest X-ray classifiers (research use only)", delete_cache=cache_sweep) as demo:
        handlers.demo = demo
        c = _layout(board, examples)
        if examples:
            from gradio.processing_utils import hash_file

            # Gradio copies a film handed out into <cache>/<hash_file(film)>/<name> (Gradio 6.31)
            handlers.examples = ExampleFilms(examples, copy_folder=hash_file)
            # not gr.Examples: it copies the films into Gradio's cache once, at start, and the cache sweep deletes
            # those copies a quarter of an hour later; here each click hands Gradio the film itself (launch with
            # allowed_paths naming the films), which it copies again or refreshes
            c.examples.click(handlers.load_example, [c.examples], [c.upload], api_name="load_example", queue=False)
        inputs = [c.upload, c.method, c.cam_class]
        # this page's upload and the token of the image decoded from it (the file itself is deleted once analysed,
        # the image is in kept_images); not part of the API
        kept = gr.State(None, time_to_live=KEPT_IMAGE_SECONDS)
        page_in, page_out = [*inputs, kept], [*c.outputs, kept]
        shared = {"concurrency_id": SERVER_QUEUE}  # one limit for the whole server
        c.run.click(
            handlers.stream, page_in, page_out, api_name="analyse_page", api_visibility="undocumented", **shared
        )
        c.upload.upload(handlers.stream, page_in, page_out, api_name=False, **shared)
        # hidden components that carry the programs' endpoints
        api_json, probabilities_json = (
            gr.JSON(visible=False, label="result"),
            gr.JSON(visible=False, label="probabilities"),
        )
        api_gallery = gr.Gallery(visible=False, format="png", label="heat maps")
        classify_button, api_button = gr.Button(visible=False), gr.Button(visible=False)
        analyse_button = gr.Button(visible=False)
        analyse_button.click(
            handlers.analyse, inputs, c.outputs, api_name="analyse", api_description=_ANALYSE_API, **shared
        )
        classify_button.click(
            handlers.classify,
            [c.upload],
            [probabilities_json],
            api_name="classify",
            api_description=_CLASSIFY_API,
            **shared,
        )
        api_button.click(
            handlers.predict,
            inputs,
            [api_json, api_gallery],
            api_name="predict",
            api_description=_PREDICT_API,
            **shared,
        )
    return demo


_ANALYSE_API = (
    "What the page shows, streamed: the status line, the image as analysed, then every "
    "model's probabilities (one output per model) and its Grad-CAM heat map as each is "
    "ready, whether the models agree, then each model's decision by its saved rule. Programs want /classify or "
    "/predict."
)
_CLASSIFY_API = (
    "Fast: every model's class probabilities for one chest X-ray (calibrated by the model's saved "
    "temperature, when it has one), no Grad-CAM. "
    "Returns JSON: error (a message for a bad upload, else null), warnings, agreement, "
    "models (per model: available, probabilities by class, predicted (the most probable class), decision (the "
    "class its saved operating point gives, e.g. Normal only when P(Normal) ≥ t) and decision_rule, temperature, "
    "out_of_distribution "
    "(true when the image does not look like the chest X-rays the model was trained on), error), "
    "example (null, or for one of the app's example films: file_name, true_class, held_out and which models "
    "tested, never saw or trained on it), disclaimer. Research use only, not for diagnosis."
)
_PREDICT_API = (
    "Every model's probabilities (as /classify) and a Grad-CAM heat map per model, in one answer. "
    "Returns the JSON of /classify plus shown_size and, per model, heatmap_index into the "
    "gallery of heat maps (PNG, the size of the image as analysed, captioned by model)."
)


def _example_entry(e: Example) -> Dict[str, Any]:
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
    import numpy as np

    return np.asarray(image)
