"""The facts of a run as the lines its reports print: the recipe, the kept model, the calibration, the data, the
preprocessing, the out-of-distribution guard and the dataset shift, each rendered from the records a run writes
(``run_config.json``, ``metrics.json``), so a report's wording is one change here."""

from __future__ import annotations

from typing import Any, Dict, Optional

from cxr.labels import DISCLAIMER, Classes
from cxr.reporting.tables import is_study_question, pct, record_classes
from cxr.run_folder import MODEL_OOD_NAME

__all__ = [
    "recipe_summary",
    "kept_description",
    "calibration_description",
    "shift_description",
    "data_line",
    "preprocessing_line",
    "classes_line",
    "ood_line",
    "training_run_facts",
    "eval_run_facts",
]


def recipe_summary(config: Dict[str, Any]) -> str:
    """One line naming a run's recipe from its ``run_config.json`` ``config``.

    Example:
        >>> recipe_summary({"optimizer": "adam", "lr": 0.0005, "lr_scheduler": "constant", "batch_size": 64,
        ...                 "epochs": 20, "seed": 1})
        'adam lr 0.0005, constant schedule, batch 64, 20 epochs, seed 1, augmentation study'
    """
    c = config
    parts = [
        f"{c['optimizer']} lr {c['lr']}" + (f" weight decay {c['weight_decay']}" if c.get("weight_decay") else ""),
        f"{c['lr_scheduler']} schedule"
        + (f" after {c['warmup_epochs']} warm-up epoch(s)" if c.get("warmup_epochs") else ""),
        f"batch {c['batch_size']}",
        f"{c['epochs']} epochs",
        f"seed {c['seed']}",
        f"augmentation {c.get('augment', 'study')}",
    ]
    if c.get("label_smoothing"):
        parts.append(f"label smoothing {c['label_smoothing']}")
    if c.get("ema_decay"):
        parts.append(f"weight EMA {c['ema_decay']}")
    if c.get("layer_decay") not in (None, 1.0):
        parts.append(f"layer-wise LR decay {c['layer_decay']}")
    if c.get("drop_path"):
        parts.append(f"drop path {c['drop_path']}")
    if c.get("freeze_bn_stats"):
        parts.append("batch-norm statistics frozen")
    if c.get("clip_grad_norm"):
        parts.append(f"gradients clipped at norm {c['clip_grad_norm']}")
    return ", ".join(parts)


def kept_description(metrics: Dict[str, Any], classes: Optional[Classes] = None) -> str:
    """Which model a run kept and why, from its ``metrics.json``.

    Args:
        metrics: the run's ``metrics.json``.
        classes: the run's classes, whose critical images called negative break ties between epochs; ``None``:
            the record's own (:func:`cxr.reporting.tables.record_classes`).
    """
    classes = record_classes(metrics) if classes is None else classes
    epoch = metrics["kept_epoch"]
    if metrics.get("final_fit"):
        calibrated = ", whose validation images also gave the temperature" if metrics.get("calibration") else ""
        return (
            f"the last epoch ({epoch}) of a refit on training + validation; the epoch count is the one kept by a "
            f"first run on training alone (in {metrics['final_fit']['holdout']}/){calibrated}"
        )
    if metrics.get("keep") == "last":
        return f"the last epoch ({epoch})"
    if classes.negative is None:
        return f"epoch {epoch}, the best on validation (accuracy)"
    return (
        f"epoch {epoch}, the best on validation (accuracy, ties broken by fewer {classes.critical_label} images "
        f"predicted as {classes.negative})"
    )


def calibration_description(calibration: Optional[Dict[str, Any]]) -> str:
    """The report's calibration line from ``metrics.json`` ``calibration``: the temperature, what it was fitted on,
    and per part the ECE before -> after with the ECE a calibrated model would show there by chance."""
    if calibration is None:
        return "off (--no-calibrate): probabilities are the softmax of the logits"
    parts = []
    for part, name in (("validation", "validation"), ("test", "test"), ("held_out", "the films it was fitted on")):
        c = calibration.get(part)
        if not c:
            continue
        text = f"{name} {c['ece_before']:.3f} -> {c['ece_after']:.3f}"
        chance = c.get("ece_if_calibrated")
        if chance:
            text += f" (by chance alone on {c['films']} films: {chance['median']:.3f}, 95%: {chance['p95']:.3f})"
        parts.append(text)
    return (
        f"temperature {calibration['temperature']:.3f} ({calibration['note']}; NLL), saved in model/config.json and "
        f"applied to every probability here; expected calibration error (15 bins), {'; '.join(parts)} — an ECE "
        "below its chance 95% is no evidence of miscalibration"
    )


def shift_description(shift: Optional[Dict[str, Any]]) -> str:
    """The report's line on ``metrics.json`` ``shift`` (:func:`cxr.metrics.shift.shift_summary`)."""
    if shift is None:
        return "not measured: the model has no out-of-distribution guard (no classifier layer to read features from)"
    beyond = shift["beyond_validation_p95"]
    verdict = (
        "**these films are not like the ones this model was validated on**"
        if shift["shifted"]
        else "no shift detected — which does not show that the films are like the training films (the guard's "
        "distances missed films from another hospital: experiments/RESULTS.md, 'Dataset shift')"
    )
    return (
        f"{verdict}: {beyond['count']}/{shift['films']} films ({pct(beyond['share'])}) beyond the validation films' "
        f"95th percentile of the guard's distance (5% expected; binomial p {beyond['p_value']:.2g}); median distance "
        f"{shift['median']:.4f} against {shift['validation_median']:.4f} ({shift['direction']}); Kolmogorov-Smirnov "
        f"D {shift['ks']['statistic']:.2f}, p {shift['ks']['p_value']:.2g} (against {shift['validation_films']} "
        "validation films)"
    )


def data_line(source: Dict[str, Any]) -> str:
    """One line for logs and reports from a run's ``data_source``: ``Hub dataset ORG/NAME @ sha (config c)`` or
    the folder's path."""
    if source["kind"] == "hub":
        text = f"Hub dataset {source['id']} @ {source['revision']}"
        if source["requested_revision"] not in ("main", source["revision"]):
            text += f" ({source['requested_revision']})"
        if source.get("from_cache"):
            text += ", cached copy"
    else:
        text = source["path"]
    return text + (f", config {source['config']}" if source.get("config") else "")


def preprocessing_line(prep: Dict[str, Any]) -> str:
    """The preprocessing saved with a checkpoint (``PreprocessConfig.to_dict()``), as every report names it.

    Example:
        >>> preprocessing_line({"image_size": 224, "in_chans": 3, "norm": "model", "mean": [0.5], "std": [0.5]})
        'grey, 224px, 3 channel(s), norm model mean [0.5] std [0.5]'
    """
    clahe = ", CLAHE" if prep.get("clahe") else ""
    return (
        f"grey{clahe}, {prep['image_size']}px, {prep['in_chans']} channel(s), norm {prep['norm']} "
        f"mean {list(prep['mean'])} std {list(prep['std'])}"
    )


def classes_line(classes: Classes) -> str:
    """The classes a model predicts and the screening question asked of them, in one line.

    Example:
        >>> classes_line(Classes.resolve(["Normal", "Tuberculosis"]))
        'Normal, Tuberculosis (output order); negative class Normal, critical class(es) Tuberculosis: a film is called Normal only by the operating point'
        >>> classes_line(Classes.resolve(["A", "B", "C"], "none"))
        'A, B, C (output order); no negative class: the decision is the most probable class (argmax)'
    """
    names = ", ".join(classes.names) + " (output order)"
    if classes.negative is None:
        return f"{names}; no negative class: the decision is the most probable class (argmax)"
    return (
        f"{names}; negative class {classes.negative}, critical class(es) {', '.join(classes.critical)}: a film is "
        f"called {classes.negative} only by the operating point"
    )


def ood_line(ood: Optional[Dict[str, Any]]) -> str:
    """The run report's line on the out-of-distribution guard (``metrics.json`` ``ood``): both measured rates."""
    if ood is None:
        return "none (the model has no classifier layer to read features from)"
    missed = f"; missed: {', '.join(ood['probes_missed'])}" if ood["probes_missed"] else ""
    return (
        f"distance to the {ood['k']}th nearest training image in feature space, threshold {ood['threshold']:.4f} "
        f"set on validation (model/{MODEL_OOD_NAME}); flagged: real X-rays of the test split "
        f"{ood['test_flagged']}/{ood['test_images']} ({100 * ood['test_flagged'] / ood['test_images']:.1f}%, "
        f"target ≤ 5%), grey images that are not chest X-rays {ood['probes_flagged']}/{ood['probes']} "
        f"({100 * ood['probes_flagged'] / ood['probes']:.1f}%, target ≥ 95%){missed}"
    )


def training_run_facts(
    run_config: Dict[str, Any], metrics: Dict[str, Any], split_file: str, classes: Optional[Classes] = None
) -> Dict[str, str]:
    """The "Run" section of a training run's ``report.md``, from its ``run_config.json`` and ``metrics.json``.

    Args:
        run_config: the run's ``run_config.json``.
        metrics: its ``metrics.json``.
        split_file: the split file's name, as the report cites it.
        classes: the run's classes; ``None``: the record's own (:func:`cxr.reporting.tables.record_classes`). Other
            than the database's four with the study's question, they get a ``classes`` line (:func:`classes_line`).
    """
    cfg, source, n = run_config["config"], run_config["data_source"], run_config["images"]
    classes = record_classes(metrics) if classes is None else classes
    facts = {
        "data": f"{data_line(source)} ({source['images']} images; split {n['train']}/{n['validation']}/"
        f"{n['test']}, seed {cfg['seed']}, {split_file})",
        "pretrained": run_config["pretrained"],
        "trained layers": f"{cfg['train_layers']} ({run_config['trainable_parameters']:,} of "
        f"{run_config['parameters']:,} parameters)",
        "preprocessing": preprocessing_line(run_config["preprocessing"]),
        "optimisation": f"{recipe_summary(cfg)}, {run_config['num_processes']} process(es)",
        "kept model": kept_description(metrics, classes),
        "train accuracy": "the kept model on the un-augmented training images",
        "calibration": calibration_description(metrics.get("calibration")),
        "out-of-distribution guard": ood_line(metrics.get("ood")),
        "run": f"{run_config['run_id']} (the same id is in run_config.json, metrics.json and model/config.json)",
        "note": DISCLAIMER,
    }
    if not is_study_question(classes):
        facts = {"classes": classes_line(classes), **facts}
    return facts


def eval_run_facts(
    model_ref: str,
    data: str,
    source: Dict[str, Any],
    images: int,
    prep: Dict[str, Any],
    skipped: int,
    metrics: Dict[str, Any],
) -> Dict[str, Any]:
    """The "Run" section of a ``python -m cxr.eval`` report, from what was evaluated and its ``metrics.json``."""
    revision = f" @ {source['revision']}" if source["kind"] == "hub" else ""
    config = f", config {source['config']}" if source.get("config") else ""
    ood = metrics.get("ood")
    return {
        "model": model_ref,
        "data": f"{data}{revision}{config} ({images} images, every one a test image)",
        "preprocessing": preprocessing_line(prep),
        "skipped unreadable images": skipped,
        "out-of-distribution guard": (
            "none (the model has no classifier layer to read features from)"
            if ood is None
            else f"{ood['flagged']} of {ood['images']} images flagged as unlike the "
            "chest X-rays the model was trained on (listed in metrics.json)"
        ),
        "dataset shift": shift_description(metrics.get("shift")),
        "note": DISCLAIMER,
    }
