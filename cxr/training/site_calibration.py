"""Setting a trained model's screening decision again for another hospital (``python -m cxr.calibrate``).

A model trained on the database keeps its weights; on a labelled sample of a site's films (any subset of the
model's classes) its operating point is chosen again with the finite-sample guarantee of
:mod:`cxr.metrics.guarantee`, computed on the site's critical films, and what the new point costs there (the
negative films kept) is reported. When the sample allows a fit (at least two of the model's classes and
:data:`MIN_TEMPERATURE_FILMS` films), the temperature is refitted too, on a stratified third of the films
(:data:`TEMPERATURE_SHARE`), and the point is set on the other two thirds, so the threshold's guarantee is computed
on films the temperature never saw. A sample without a critical film cannot set a safe threshold: the original
point is kept, the negative-kept rate at the site is reported, and the record says that the guarantee was not
re-established there.

The output is a run folder (:class:`cxr.run_folder.RunFolder`): ``model/`` (the original weights and guard, the
config with the new temperature, operating point and ``cxr.recalibration``), the original run's published records
when the model was a run's ``model/`` (so ``cxr.hub push`` publishes it with its card), ``site_calibration.json``
and ``site_calibration.md``. Research use only — not for diagnosis.

Example:
    >>> recalibrate("runs/lite0/model", "hospital_b/", "runs/lite0-hospital-b")          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from cxr.data.data_source import check_data_options, load_data_source
from cxr.data.dataset import ModelInput, RadiographDataset
from cxr.data.labelling import Labelling
from cxr.data.pixel_cache import cache_pixels
from cxr.errors import CXRError
from cxr.labels import DISCLAIMER, Classes
from cxr.metrics.guarantee import DEFAULT_CONFIDENCE, DEFAULT_GUARANTEE
from cxr.metrics.operating_point import (
    DEFAULT_MAX_MISSED_RATE,
    OperatingPoint,
    check_missed_rate,
    choose_operating_point,
    operating_rates,
)
from cxr.metrics.stats import fit_temperature_to_logits
from cxr.models.checkpoint import read_model_config
from cxr.run_folder import RunFolder, write_json
from cxr.training.evaluation import predict_outputs, softmax

__all__ = ["recalibrate", "MIN_TEMPERATURE_FILMS", "TEMPERATURE_SHARE", "SiteCalibration"]

_logger = logging.getLogger(__name__)

#: The fewest films, of at least two classes, on which the temperature is refitted.
MIN_TEMPERATURE_FILMS = 60
#: The share of the site's films (stratified by class) the refitted temperature is fitted on.
TEMPERATURE_SHARE = 1 / 3


@dataclasses.dataclass(frozen=True)
class SiteCalibration:
    """What ``cxr.calibrate`` did at a site: ``record`` (``site_calibration.json``, also ``cxr.recalibration`` of
    the model's config) and the operating point the model now has (``None``: argmax)."""

    record: Dict[str, Any]
    operating_point: Optional[OperatingPoint]


def _split_for_temperature(labels: np.ndarray, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Row indices (temperature, threshold): a stratified :data:`TEMPERATURE_SHARE` of each class, seeded."""
    rng = np.random.default_rng(seed)
    fit, rest = [], []
    for k in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == k))
        n = int(round(len(rows) * TEMPERATURE_SHARE))
        fit.extend(rows[:n])
        rest.extend(rows[n:])
    return np.sort(np.asarray(fit, dtype=np.int64)), np.sort(np.asarray(rest, dtype=np.int64))


def _predict_site(clf: Any, data: str, labelling: Labelling, options: Dict[str, Any]) -> Tuple[Any, Any, Any]:
    """The site's films through the model: (source, cached pixels, outputs)."""
    from accelerate import Accelerator  # accelerate loads only once the options are checked

    source = load_data_source(data, options.get("dataset_revision"), options.get("dataset_config"), labelling)
    cached = cache_pixels(
        source.dataset,
        clf.preprocess.image_size,
        cache_dir=options.get("cache_dir"),
        skip_bad_images=bool(options.get("skip_bad_images")),
        clahe=clf.preprocess.clahe,
    )
    view = RadiographDataset(cached.dataset, clf.preprocess)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    loader = torch.utils.data.DataLoader(
        view, batch_size=int(options.get("batch_size") or 64), num_workers=int(options.get("num_workers") or 0)
    )
    model, loader = accelerator.prepare(clf.model, loader)
    to_input = ModelInput(clf.preprocess)
    return source, cached, predict_outputs(model, loader, accelerator, to_input, desc="cxr.calibrate", features=False)


def recalibrate(
    model: str,
    data: str,
    output_dir: Path,
    label_map: Sequence[str] = (),
    max_missed_rate: Optional[float] = None,
    guarantee: str = DEFAULT_GUARANTEE,
    confidence: float = DEFAULT_CONFIDENCE,
    temperature: str = "auto",
    seed: int = 1,
    **data_options: Any,
) -> SiteCalibration:
    """Set ``model``'s operating point (and temperature) again on the labelled site films ``data``; write the
    recalibrated run folder ``output_dir`` (see the module docstring).

    Args:
        model: a model folder (a run's ``model/``) or a Hub repository id.
        data: the site's labelled films: class folders or a dataset, any subset of the model's classes.
        output_dir: the new run folder (must not hold a run).
        label_map: ``--label-map`` values: the site's class names onto the model's.
        max_missed_rate: the target share of critical films called negative (default: the model's own target).
        guarantee, confidence: the finite-sample guarantee (:mod:`cxr.metrics.guarantee`).
        temperature: ``auto`` (refit when the films allow it) or ``keep``.
        seed: the seed of the temperature's stratified third.
        data_options: ``dataset_revision``, ``dataset_config``, ``cache_dir``, ``skip_bad_images``,
            ``batch_size``, ``num_workers``.

    Raises:
        CXRError: a bad option, a model without a negative class, site classes the model does not know or no film
            of its classes — each in one sentence, before anything is written.
    """
    from cxr.models.classifier import CXRClassifier  # the model layer loads after the options are checked

    output_dir = Path(output_dir)
    if temperature not in ("auto", "keep"):
        raise CXRError(f"--temperature must be auto or keep, got {temperature!r}")
    check_data_options(data, data_options.get("dataset_revision"), data_options.get("dataset_config"))
    Labelling.parse(label_map)
    if RunFolder(output_dir).holds_run() or RunFolder(output_dir).model_dir.exists():
        raise CXRError(f"--output-dir {output_dir} already holds a model; choose another folder")
    if Path(model).resolve() in (output_dir.resolve(), RunFolder(output_dir).model_dir.resolve()):
        raise CXRError("--output-dir must be another folder than the model's")
    clf = CXRClassifier.from_pretrained(model)
    classes: Classes = clf.classes
    if classes.negative is None:
        raise CXRError(
            f"{model} has no negative class (its classes: {', '.join(classes.names)}): it makes no screening "
            "decision to set again"
        )
    original = clf.operating_point
    if max_missed_rate is not None:
        target = max_missed_rate
    else:
        target = (original.max_missed_rate if original is not None else None) or DEFAULT_MAX_MISSED_RATE
    try:
        check_missed_rate(target, classes.critical_label, classes.negative)
    except ValueError as e:
        raise CXRError(str(e)) from None
    labelling = Labelling.parse(label_map, classes=classes.names, partial=True)
    source, cached, out = _predict_site(clf, data, labelling, data_options)
    labels, logits = out.labels, out.logits
    present = sorted({classes.names[int(k)] for k in np.unique(labels)}, key=classes.names.index)
    refit = temperature == "auto" and len(present) >= 2 and len(labels) >= MIN_TEMPERATURE_FILMS
    t, temperature_note = clf.temperature, "the model's own (kept)"
    rows = np.arange(len(labels))
    if refit:
        fit_rows, rows = _split_for_temperature(labels, seed)
        t = fit_temperature_to_logits(labels[fit_rows], logits[fit_rows])
        temperature_note = (
            f"refitted on a stratified third of the site's films ({len(fit_rows)}); the operating point is set on the "
            f"other {len(rows)}"
        )
    elif temperature == "auto":
        temperature_note += (
            f" (a refit needs at least two of the model's classes and {MIN_TEMPERATURE_FILMS} films; the site has "
            f"{len(present)} class(es), {len(labels)} films)"
        )
    y, probs = labels[rows], softmax(logits[rows], t)
    site = f"{len(rows)} films of {data}"
    chosen = choose_operating_point(y, probs, classes, target, f"{site} (cxr.calibrate)", guarantee, confidence)
    critical = int(np.isin(y, classes.critical_indices).sum())
    if chosen is None:  # no critical film at the site: the original point stays
        op = original
        note = (
            f"no {classes.critical_label} film among the site's films: the original operating point is kept and its "
            "guarantee was not re-established at this site"
        )
    else:
        op, note = chosen, ""
    threshold = None if op is None else op.normal_threshold
    at_site = operating_rates(y, probs, threshold, classes) if threshold is not None else None
    record = {
        "site": str(data),
        "data_source": source.info,
        "model": str(model),
        "date": datetime.date.today().isoformat(),
        "films": int(len(labels)),
        "films_for_threshold": int(len(rows)),
        "classes_present": present,
        "critical_films": critical,
        "negative_films": int((y == classes.negative_index).sum()),
        "negative_kept_rate": None if at_site is None else at_site["normal_kept_rate"],
        "rates": at_site,
        "temperature": float(t),
        "temperature_refitted": bool(refit),
        "temperature_note": temperature_note,
        "original_operating_point": None if original is None else original.to_config(),
        "operating_point": None if op is None else op.to_config(),
        "guarantee_re_established": chosen is not None,
        "guarantee_sentence": (
            chosen.guarantee_sentence if chosen is not None else "Not re-established at this site (no critical film)."
        ),
        "note": note,
        "skipped_unreadable_images": [n for n, _ in cached.bad],
        "disclaimer": DISCLAIMER,
    }
    _write(clf.source, output_dir, record, t, op)
    return SiteCalibration(record, op)


def _write(model: str, output_dir: Path, record: Dict[str, Any], t: float, op: Optional[OperatingPoint]) -> None:
    """The recalibrated run folder: ``model/`` with the new config, the run's published records, the record and
    its page."""
    from cxr.reporting.site_report import render_site_report

    run = RunFolder(output_dir)
    original_dir = Path(model)
    cfg, _ = read_model_config(model)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / f".model.tmp-{datetime.datetime.now().timestamp():.0f}"
    tmp.mkdir()
    if original_dir.is_dir():
        for f in original_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        origin_run = RunFolder(original_dir.parent)
        if origin_run.model_dir.resolve() == original_dir.resolve():
            for f in (origin_run.run_config, *origin_run.published, origin_run.report):
                if f.is_file():
                    shutil.copy2(f, output_dir / f.name)
    else:  # a Hub id: the files of the revision it was read at
        from huggingface_hub import snapshot_download  # the Hub client loads only for a Hub model

        snap = Path(snapshot_download(model, allow_patterns=["config.json", "*.safetensors"]))
        for f in snap.iterdir():
            shutil.copy2(f, tmp / f.name)
    cxr_block = cfg.setdefault("cxr", {})
    cxr_block["temperature"] = float(t)
    if op is not None:
        cxr_block["operating_point"] = op.to_config()
    cxr_block["recalibration"] = {
        k: record[k]
        for k in (
            "site",
            "date",
            "films",
            "critical_films",
            "negative_films",
            "negative_kept_rate",
            "guarantee_sentence",
            "guarantee_re_established",
            "temperature_refitted",
            "note",
        )
    }
    write_json(tmp / "config.json", cfg)
    tmp.rename(run.model_dir)
    write_json(run.site_calibration, record)
    run.site_report.write_text(render_site_report(record))
