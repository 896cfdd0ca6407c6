"""Model cards rendered from a run's own files, so a card can never disagree with ``metrics.json``.

:func:`render_model_card` fills ``model_cards/cxr_model_card.md`` (a Jinja template) through
``huggingface_hub.ModelCard.from_template``. The YAML metadata carries a ``model-index`` with the
test accuracy and every class's recall, readable by ``huggingface_hub``'s model-index parser.

Example:
    >>> card = render_model_card("runs/lite0", "my-org/cxr-lite0")        # doctest: +SKIP
    >>> card.data.eval_results[0].metric_value                           # doctest: +SKIP
    0.8333
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .errors import CXRError
from .labels import CLASS_NAMES
from .report import per_class_lines, table1_lines
from .study_reference import STUDY_PER_CLASS, STUDY_SOURCE, study_row

__all__ = ["TEMPLATE_PATH", "CARD_TAGS", "render_model_card", "card_eval_results"]

_logger = logging.getLogger(__name__)

#: The Jinja template (shipped in the repository's ``model_cards/`` folder and inside the package data).
TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "model_cards" / "cxr_model_card.md"
CARD_TAGS = ["medical-imaging", "chest-x-ray", "covid-19", "image-classification", "timm", "cxr"]
DATASET_NAME = "COVID-19 Radiography Database"
DATASET_TYPE = "covid19-radiography-database"


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CXRError(f"{path.parent} is not a finished cxr run: {path.name} is missing") from None


def card_eval_results(metrics: Dict[str, Any], model_name: str, dataset_name: str):
    """``EvalResult`` entries for the model-index: test accuracy, macro AUROC and each class's recall."""
    from huggingface_hub import EvalResult

    test = metrics["test"]
    common = dict(task_type="image-classification", task_name="Image Classification", dataset_type=DATASET_TYPE,
                  dataset_name=dataset_name, dataset_split="test")
    results = [EvalResult(metric_type="accuracy", metric_name="Test accuracy", metric_value=round(test["accuracy"], 6),
                          **common)]
    if test.get("auroc") is not None:
        results.append(EvalResult(metric_type="roc_auc", metric_name="Macro one-vs-rest AUROC",
                                  metric_value=round(test["auroc"], 6), metric_config="macro-ovr", **common))
    for name in CLASS_NAMES:
        results.append(EvalResult(metric_type="recall", metric_name=f"{name} recall", metric_config=name,
                                  metric_value=round(test["per_class"][name]["recall"], 6), **common))
    return results


def render_model_card(run_dir: Union[str, Path], repo_id: str, data_id: Optional[str] = None):
    """Render the model card of a finished training run.

    Args:
        run_dir: a ``train_accelerate.py`` output folder (``model/``, ``metrics.json``, ``run_config.json``,
            ``split.json``).
        repo_id: the Hub repository it will live in (``ORG/NAME``), used in the snippets.
        data_id: a Hub dataset id to list under ``datasets:`` (default: the run's ``--data`` when it is one).

    Returns:
        A ``huggingface_hub.ModelCard``.

    Raises:
        CXRError: the folder is not a finished run.
    """
    from huggingface_hub import ModelCard, ModelCardData

    run_dir = Path(run_dir)
    metrics = _read_json(run_dir / "metrics.json")
    run = _read_json(run_dir / "run_config.json")
    split = _read_json(run_dir / "split.json")
    model_cfg = _read_json(run_dir / "model" / "config.json")
    cfg = run["config"]
    prep = model_cfg["cxr"]["preprocessing"]
    model_name = cfg["model"]
    data = str(cfg["data"])
    local_data = Path(data).exists() or data.startswith((".", "/", "~"))
    if data_id is None and not local_data:
        data_id = data
    dataset_name = DATASET_NAME if data_id is None else data_id
    row = study_row(model_name)
    counts = " / ".join(str(len(split[p])) for p in ("train", "validation", "test"))
    card_data = ModelCardData(
        license="other",
        library_name="timm",
        pipeline_tag="image-classification",
        tags=CARD_TAGS + [model_name],
        datasets=[data_id] if data_id else None,
        metrics=["accuracy", "recall", "roc_auc"],
        base_model=None,
        model_name=repo_id,
        eval_results=card_eval_results(metrics, repo_id, dataset_name),
    )
    versions = ", ".join(f"{k} {v}" for k, v in run.get("versions", {}).items())
    caveat = ""
    if "sample" in data.lower():
        caveat = ("\nThis model was trained on a 600-image developer sample whose classes also differ in file size, "
                  "mode and processing history (Lung_Opacity reconstructed from false-colour JPEGs): its figures "
                  "say little about the full database and less about patients.")
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        repo_id=repo_id,
        model_label=row["label"] if row else model_name,
        architecture=model_cfg["architecture"],
        parameters=f"{run['parameters']:,}",
        trainable=f"{run['trainable_parameters']:,}",
        train_layers=run["train_layers"],
        pretrained=run["pretrained"],
        image_size=prep["image_size"],
        in_chans=prep["in_chans"],
        mean=[round(v, 6) for v in prep["mean"]],
        std=[round(v, 6) for v in prep["std"]],
        norm=prep["norm"],
        prep_literal=json.dumps(prep),
        optimisation=(f"{cfg['optimizer']} lr {cfg['lr']}, {cfg['lr_scheduler']} schedule, batch {cfg['batch_size']}, "
                      f"{cfg['epochs']} epochs, seed {cfg['seed']}"),
        best_epoch=metrics.get("best_epoch"),
        versions=versions or "unknown",
        data_caveat=caveat,
        data_description=(f"`{data_id}` (Hugging Face dataset)" if data_id else
                          f"{DATASET_NAME} images from a local folder ({sum(len(split[p]) for p in ('train', 'validation', 'test'))} images)"),
        split_counts=counts,
        seed=split.get("seed", cfg["seed"]),
        n_test=metrics["test"]["num_images"],
        table1="\n".join(table1_lines(model_name, metrics)),
        study_note=(f"Study row: {STUDY_SOURCE}; figures on different test sets are not directly comparable."
                    if row else "The study did not train this architecture; it has no published row."),
        per_class="\n".join(per_class_lines(model_name, metrics["test"])),
        per_class_note=("The study printed its per-class precision and recall swapped; they are shown corrected."
                        if model_name in STUDY_PER_CLASS else ""),
        auroc="undefined" if metrics["test"].get("auroc") is None else f"{metrics['test']['auroc']:.4f}",
    )
    return card
