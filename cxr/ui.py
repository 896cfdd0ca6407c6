"""The Gradio page: one column per model — prediction, probabilities, Grad-CAM — side by side.

:func:`build_demo` lays out a :class:`~cxr.demo.ModelBoard`. The page's event streams (all
probabilities first, heat maps as they are ready); the ``/predict`` API endpoint returns every
model's probabilities (JSON) and heat maps (a gallery) in one answer for ``gradio_client``.
Research use only — not for diagnosis.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .cam import CAM_METHODS
from .demo import Analysis, ModelBoard, agreement_line
from .labels import CLASS_NAMES
from .report import DISCLAIMER

__all__ = ["build_demo", "PREDICTED", "UPLOAD_TYPES"]

_logger = logging.getLogger(__name__)

PREDICTED = "predicted class"
UPLOAD_TYPES = [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom"]

_INTRO = f"""# Chest X-ray classifiers, side by side

**{DISCLAIMER}** Upload a frontal chest X-ray (PNG, JPEG or DICOM): every model below gives its four
class probabilities and a Grad-CAM heat map of where it looked. These models were trained on a
database whose classes come from different hospitals and age groups, so they can answer from the
source of an image rather than from disease."""


def _model_header(m) -> str:
    if not m.available:
        return f"### ⚠ {m.ref}\n\nUnavailable: {m.error}"
    name = f"[{m.title}]({m.card_url})" if m.card_url else m.title
    prep = m.classifier.preprocess
    return f"### {name}\n\n{prep.image_size}px, norm {prep.norm}"


def _cam_class(choice: Optional[str]) -> Optional[str]:
    return choice if choice in CLASS_NAMES else None


def _status(a: Analysis, done: bool) -> str:
    if a.error:
        return f"**⚠ {a.error}**"
    lines = [f"**⚠ {w}**" for w in a.warnings]
    lines += [f"{ref}: {err}" for ref, err in a.model_errors.items()]
    lines.append(f"*{DISCLAIMER}*" if done else f"*Computing heat maps… — {DISCLAIMER}*")
    return "\n\n".join(lines)


def build_demo(board: ModelBoard, examples: Sequence[str] = ()):
    """Build the ``gr.Blocks`` page for ``board``.

    Args:
        board: the loaded models (unavailable ones are shown with their reason).
        examples: image paths offered as clickable examples.

    Returns:
        The unlaunched ``gr.Blocks``.
    """
    import gradio as gr

    shown = board.models
    with gr.Blocks(title="cxr — chest X-ray classifiers (research use only)") as demo:
        gr.Markdown(_INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Chest X-ray (PNG, JPEG or DICOM)", file_types=UPLOAD_TYPES, type="filepath")
                method = gr.Dropdown(CAM_METHODS, value="GradCAM", label="Grad-CAM method")
                cam_class = gr.Dropdown([PREDICTED, *CLASS_NAMES], value=PREDICTED, label="Explain")
                run = gr.Button("Analyse", variant="primary")
            with gr.Column(scale=1):
                image = gr.Image(label="Image as analysed (grey)", type="numpy", interactive=False, height=320)
        status = gr.Markdown(f"*{DISCLAIMER}*", elem_id="status")
        labels, heatmaps = [], []
        with gr.Row(equal_height=False):
            for i, m in enumerate(shown):
                with gr.Column(min_width=220, elem_id=f"model-{i}", elem_classes=["model-column"]):
                    gr.Markdown(_model_header(m))
                    labels.append(gr.Label(num_top_classes=4, label="Probabilities", elem_id=f"label-{i}"))
                    heatmaps.append(gr.Image(label="Grad-CAM", type="numpy", interactive=False,
                                             elem_id=f"heatmap-{i}", height=260))
        agreement = gr.Markdown("", elem_id="agreement")
        if examples:
            gr.Examples(examples=[[e] for e in examples], inputs=[upload], label="Examples (click one)")

        def stream(path, method_name, explain):
            """Yield the page's outputs as they are ready, skipping those that did not change
            (Gradio would otherwise re-encode and re-send every heat map at each step)."""
            sent: Optional[List[Any]] = None
            last, shown_array = None, None
            for a in board.analyse(path, method_name or "GradCAM", _cam_class(explain)):
                last = a
                if shown_array is None and a.shown is not None:
                    shown_array = _as_array(a.shown)
                out = _outputs(a, shown_array, done=False)
                yield _changed(out, sent)
                sent = out
            if last is not None:
                yield _changed(_outputs(last, shown_array, done=True), sent)

        def _outputs(a: Analysis, shown_array, done: bool) -> List[Any]:
            out: List[Any] = [_status(a, done), shown_array]
            for m in shown:
                probs = a.probabilities.get(m.ref)
                out.append(probs if probs else None)
            for m in shown:
                out.append(a.heatmaps.get(m.ref))
            out.append(agreement_line(a.probabilities))
            return out

        outputs = [status, image, *labels, *heatmaps, agreement]
        run.click(stream, [upload, method, cam_class], outputs, api_name="analyse")
        upload.upload(stream, [upload, method, cam_class], outputs, api_name=False)

        api_json = gr.JSON(visible=False)
        api_gallery = gr.Gallery(visible=False, format="png")
        api_button = gr.Button(visible=False)

        def predict(path, method_name="GradCAM", explain=PREDICTED) -> Tuple[Dict[str, Any], List[Any]]:
            """Every model's probabilities (JSON) and heat maps (gallery, one per model, captioned by model)."""
            final = None
            for final in board.analyse(path, method_name or "GradCAM", _cam_class(explain)):
                pass
            if final.error:
                return {"error": final.error}, []
            models, gallery = {}, []
            for m in shown:
                entry: Dict[str, Any] = {"available": m.available}
                if not m.available:
                    entry["error"] = m.error
                elif m.ref in final.model_errors:
                    entry["error"] = final.model_errors[m.ref]
                probs = final.probabilities.get(m.ref)
                if probs:
                    entry.update(probabilities=probs, predicted=max(probs, key=probs.get))
                if m.ref in final.heatmaps:
                    entry["heatmap_index"] = len(gallery)
                    gallery.append((final.heatmaps[m.ref], m.ref))
                models[m.ref] = entry
            return {"error": None, "warnings": final.warnings, "shown_size": list(final.shown.size),
                    "agreement": agreement_line(final.probabilities), "models": models,
                    "disclaimer": DISCLAIMER}, gallery

        api_button.click(predict, [upload, method, cam_class], [api_json, api_gallery], api_name="predict")
    return demo


def _changed(new: List[Any], old: Optional[List[Any]]) -> List[Any]:
    """``gr.skip()`` in place of every output identical to what was already sent."""
    import gradio as gr

    if old is None:
        return new
    return [gr.skip() if (n is o or (isinstance(n, str) and n == o)) else n for n, o in zip(new, old)]


def _as_array(image):
    import numpy as np

    return np.asarray(image)
