"""The Gradio page: one column per model — prediction, probabilities, Grad-CAM — side by side.

:func:`build_demo` lays out a :class:`~cxr.app.board.ModelBoard`. The page's event streams (all
probabilities first, heat maps as they are ready); the ``/predict`` API endpoint returns every
model's probabilities (JSON) and heat maps (a gallery) in one answer for ``gradio_client``.
Each model shows its own classes; the "Explain" choice offers every class of the models shown (a model without the
class chosen explains its predicted class, and its column says so). Research use only — not for diagnosis.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, List, Optional, Sequence, Tuple

from cxr.app.board import ModelBoard, decision_rule, site_line
from cxr.app.examples import Example, ExampleFilms, KnownFilms
from cxr.app.gradio_internals import copy_folder_name, single_file_input, write_images_whole
from cxr.app.handlers import PREDICTED, PageHandlers
from cxr.app.kept import KeptImages
from cxr.app.upload_guard import StoredUploads
from cxr.data.decode import UPLOAD_SUFFIXES
from cxr.labels import DISCLAIMER
from cxr.models.cam import CAM_METHODS

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

**{DISCLAIMER}** Upload a frontal chest X-ray (PNG, JPEG or DICOM): every model below gives its
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


def _model_header(m, with_classes: bool = False) -> str:
    """A model column's heading: its name, input, decision rule and, for a model recalibrated at another site,
    where and what it guarantees there; its classes when the models shown differ in them."""
    if not m.available:
        return f"### ⚠ {m.ref}\n\nUnavailable: {m.error}"
    name = f"[{m.title}]({m.card_url})" if m.card_url else m.title
    clf = m.classifier
    prep = clf.preprocess
    header = f"### {name}\n\n{prep.image_size}px, norm {prep.norm}. Decision: {decision_rule(clf)}"
    if with_classes:
        header += f"\n\nClasses: {', '.join(clf.label_names)}"
    site = site_line(clf)
    return f"{header}\n\n{site}" if site else header


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


def _layout(board: ModelBoard, examples: Sequence[Example] = ()) -> _Components:
    """The visible page: the upload, the examples under it, the options, the image as analysed, one column per
    model."""
    import gradio as gr  # Gradio loads only when a page is built or served

    shown = board.models
    gr.Markdown(_INTRO)
    if not shown:
        gr.Markdown(NO_MODELS, elem_id="no-models")
    with gr.Row():
        with gr.Column(scale=1):
            upload = single_file_input(
                label="Chest X-ray (PNG, JPEG or DICOM)", file_types=UPLOAD_TYPES, elem_id="upload"
            )
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
            cam_class = gr.Dropdown([PREDICTED, *board.class_names], value=PREDICTED, label="Explain")
            run = gr.Button("Analyse", variant="primary", interactive=bool(shown))
        with gr.Column(scale=1):
            image = gr.Image(label="Image as analysed (grey)", type="numpy", interactive=False, height=320)
    status = gr.Markdown(f"*{DISCLAIMER}*", elem_id="status", label="Status")
    labels, heatmaps, decisions = [], [], []
    with gr.Row(equal_height=False):
        for i, m in enumerate(shown):
            with gr.Column(min_width=220, elem_id=f"model-{i}", elem_classes=["model-column"]):
                gr.Markdown(_model_header(m, with_classes=not board.same_classes))
                decisions.append(gr.Markdown("", elem_id=f"decision-{i}", label=f"Decision · {m.ref}"))
                classes = len(m.classifier.label_names) if m.available else 4
                labels.append(gr.Label(num_top_classes=classes, label=f"Probabilities · {m.ref}", elem_id=f"label-{i}"))
                heatmaps.append(
                    gr.Image(
                        label=f"Grad-CAM · {m.ref}", type="numpy", interactive=False, elem_id=f"heatmap-{i}", height=260
                    )
                )
    agreement = gr.Markdown("", elem_id="agreement", label="Agreement")
    return _Components(upload, method, cam_class, run, image, status, labels, heatmaps, agreement, decisions, table)


def build_demo(
    board: ModelBoard,
    uploads: StoredUploads,
    examples: Sequence[Example] = (),
    cache_sweep: Tuple[int, int] = CACHE_SWEEP,
    kept_images: Optional[KeptImages] = None,
    known_films: Optional[KnownFilms] = None,
):
    """Build the ``gr.Blocks`` page for ``board``: the layout, the streamed page event, and the ``/analyse``,
    ``/classify`` and ``/predict`` API endpoints.

    Args:
        board: the loaded models (unavailable ones are shown with their reason).
        uploads: the record of uploads, which deletes each once analysed (:class:`StoredUploads`; the upload
            route's guard records each arrival in it: :func:`cxr.app.server.launch`); the page's cache sweep never
            deletes an upload recorded there.
        examples: films offered as clickable examples (:func:`cxr.app.examples.choose_examples`), each captioned
            with its true class and whether the models held it out; one a model trained on gets a note on the page.
        cache_sweep: Gradio's cache sweep, (every, older than) in seconds (:data:`CACHE_SWEEP`).
        kept_images: where pages keep decoded uploads to analyse again (default: :data:`KEPT_IMAGES_MB` for
            :data:`KEPT_IMAGE_SECONDS`).
        known_films: the served models' own films, by their bytes: an upload of one is said to be it, and whether
            each model trained on it or held it out (:class:`cxr.app.examples.KnownFilms`; default: none known).

    Returns:
        The unlaunched ``gr.Blocks``.
    """
    import gradio as gr  # Gradio loads only when a page is built

    write_images_whole()  # two visitors' identical heat maps share one path: each appears there whole
    if kept_images is None:  # (an empty store is falsy: it has a length)
        kept_images = KeptImages(KEPT_IMAGES_MB << 20, KEPT_IMAGE_SECONDS)
    handlers = PageHandlers(board, kept_images, uploads)
    if known_films is not None:
        handlers.known = known_films
    with gr.Blocks(title="cxr — chest X-ray classifiers (research use only)", delete_cache=cache_sweep) as demo:
        handlers.demo = demo
        uploads.attach(demo)
        c = _layout(board, examples)
        if examples:
            _offer_examples(handlers, c, examples)
        _wire_page(handlers, c)
        _wire_api(handlers, c)
    return demo


def _offer_examples(handlers: PageHandlers, c: _Components, examples: Sequence[Example]) -> None:
    """A click on an example hands Gradio the film itself (the app launches with ``allowed_paths`` naming them)."""
    handlers.examples = ExampleFilms(examples, copy_folder=copy_folder_name)  # the folder Gradio copies a film to
    # not gr.Examples: it copies the films into Gradio's cache once, at start, and the cache sweep deletes
    # those copies a quarter of an hour later; here each click hands Gradio the film itself, which it copies
    # again or refreshes
    c.examples.click(handlers.load_example, [c.examples], [c.upload], api_name="load_example", queue=False)


def _wire_page(handlers: PageHandlers, c: _Components) -> None:
    """The page's own event: an upload or "Analyse" streams the analysis, in the one server queue."""
    import gradio as gr  # Gradio loads only when a page is built or served

    # this page's upload, the token of the image decoded from it (the file itself is deleted once analysed,
    # the image is in kept_images) and which of the models' films it is, if any; not part of the API
    kept = gr.State(None, time_to_live=KEPT_IMAGE_SECONDS)
    page_in, page_out = [c.upload, c.method, c.cam_class, kept], [*c.outputs, kept]
    shared = {"concurrency_id": SERVER_QUEUE}  # one limit for the whole server
    c.run.click(handlers.stream, page_in, page_out, api_name="analyse_page", api_visibility="undocumented", **shared)
    c.upload.upload(handlers.stream, page_in, page_out, api_name=False, **shared)


def _wire_api(handlers: PageHandlers, c: _Components) -> None:
    """The programs' endpoints ``/analyse``, ``/classify`` and ``/predict``, carried by hidden components."""
    import gradio as gr  # Gradio loads only when a page is built or served

    inputs = [c.upload, c.method, c.cam_class]
    shared = {"concurrency_id": SERVER_QUEUE}
    api_json, probabilities_json = gr.JSON(visible=False, label="result"), gr.JSON(visible=False, label="probabilities")
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
        handlers.predict, inputs, [api_json, api_gallery], api_name="predict", api_description=_PREDICT_API, **shared
    )


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
    "models (per model: available, probabilities by class (the model's own classes), predicted (the most "
    "probable class), decision (the class its saved operating point gives, e.g. Normal only when P(Normal) ≥ t; "
    "argmax for a model without a negative class) and decision_rule, temperature, "
    "out_of_distribution "
    "(true when the image does not look like the chest X-rays the model was trained on), error), "
    "example (null, or for one of the app's example films: file_name, true_class, held_out and which models "
    "tested, never saw or trained on it), known_film (null, or the same for an upload whose bytes are a film of a "
    "model's own split: an answer of a model that trained on it is not a test), disclaimer. "
    "Research use only, not for diagnosis."
)
_PREDICT_API = (
    "Every model's probabilities (as /classify) and a Grad-CAM heat map per model, in one answer. "
    "Returns the JSON of /classify plus shown_size and, per model, explained (the class its heat map explains: "
    "the class asked for, or its predicted class when the model has no class of that name) and heatmap_index "
    "into the gallery of heat maps (PNG, the size of the image as analysed, captioned by model)."
)
