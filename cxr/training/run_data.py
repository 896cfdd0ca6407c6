"""The data stage of a training run: the images decoded and resized once into the pixel cache, and the split
settled — a resumed run's, the hold-out run's for a refit, a ``--split-file``, or a new stratified one."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from cxr.data.content import content_digests
from cxr.data.data_source import load_data_source
from cxr.data.labelling import Labelling
from cxr.data.pixel_cache import cache_pixels
from cxr.data.splits import SPLITS, complete_split, indices_for_split, load_split
from cxr.errors import CXRError
from cxr.labels import Classes
from cxr.reporting.run_facts import data_line
from cxr.run_folder import RunFolder
from cxr.training.config import Recipe

__all__ = ["RunData", "Refit", "prepare_data"]


@dataclasses.dataclass(frozen=True)
class Refit:
    """What ``--final-fit``'s second run takes from its hold-out run: its split (the refit trains on its
    training and validation parts) and its calibration, fitted on validation while it was held out."""

    split: Dict[str, List[str]]
    calibration: Optional[Dict[str, Any]]  # the hold-out run's (None: --no-calibrate)
    holdout: Path
    how: Dict[str, str]  # how the hold-out run's split was made, part by part


@dataclasses.dataclass(frozen=True)
class RunData:
    """The images of a run: the cached pixels, each image's file name, the split (file names per part), each
    part's rows in the cache (a refit trains on validation too), where the data came from, what was skipped, and
    the classes (the data's, with ``--label-map``, ``--negative-class`` and ``--critical-classes``) and, in the
    main process, each film's content digest (``{file_name: digest}``: written into ``split.json``, so that the app
    knows the run's films by their bytes)."""

    pix: Any
    file_names: Sequence[str]
    split: Dict[str, List[str]]
    rows: Dict[str, List[int]]
    source: Dict[str, Any]
    given_splits: bool
    skipped: List[str]
    classes: Classes
    content: Dict[str, str] = dataclasses.field(default_factory=dict)

    def files(self, part: str) -> List[str]:
        """The file names of ``part``'s images, in row order."""
        return [self.file_names[i] for i in self.rows[part]]


def prepare_data(cfg: Recipe, accelerator: Any, resumed: Optional[Dict[str, Any]], refit: Optional[Refit]) -> RunData:
    """Decode and resize once (main process first, the others then read its cache) and settle the split. A
    resumed run reads a Hub dataset at the commit it started from unless ``--dataset-revision`` says otherwise.
    Writes only the pixel cache."""
    prior_source = (resumed or {}).get("data_source") or {}
    revision = cfg.dataset_revision
    if revision is None and prior_source.get("kind") == "hub" and prior_source.get("id") == cfg.data:
        revision = prior_source.get("revision")
    with accelerator.main_process_first():
        source = load_data_source(cfg.data, revision, cfg.dataset_config, Labelling.parse(cfg.label_map))
        classes = Classes.resolve(source.dataset.features["label"].names, cfg.negative_class, cfg.critical_classes)
        cached = cache_pixels(
            source.dataset,
            cfg.image_size,
            cache_dir=cfg.cache_dir,
            skip_bad_images=cfg.skip_bad_images,
            clahe=cfg.clahe,
        )
    pix = cached.dataset
    _check_every_class_has_films(pix, classes)
    file_names = pix["file_name"]
    if resumed is not None:  # a resumed run keeps the split it started with, whatever the data or flags say now
        split = resumed["split"]
        how = prior_source["splits"]
    elif refit is not None:  # the hold-out split, saved as it is; training also takes validation
        split, how = refit.split, dict(refit.how)
        how = {
            part: how.get(part, f"as in {refit.holdout.name}/{RunFolder(refit.holdout).split.name}") for part in SPLITS
        }
        how["train"] += "; with the validation images added (--final-fit)"
        how["validation"] += "; trained on here (--final-fit), so not held out"
    elif cfg.split_file:
        split = load_split(cfg.split_file)
        how = {part: f"from --split-file {cfg.split_file}" for part in SPLITS}
    else:
        split, how = complete_split(file_names, pix["label"], source.given_splits, seed=cfg.seed)
    rows = indices_for_split(file_names, split)
    if refit is not None:
        rows["train"] = sorted(rows["train"] + rows["validation"])
    data = RunData(
        pix=pix,
        file_names=file_names,
        split=split,
        rows=rows,
        source={**source.info, "images": len(pix), "splits": how},
        given_splits=bool(source.given_splits),
        skipped=[n for n, _ in cached.bad],
        classes=classes,
        # each film's bytes read once more, by the process that writes split.json
        content=content_digests(source.dataset) if accelerator.is_main_process else {},
    )
    accelerator.print(f"data: {data_line(data.source)}")
    accelerator.print(f"  classes: {', '.join(classes.names)}; {_screening_line(classes)}")
    for part in SPLITS:
        accelerator.print(f"  {part}: {len(rows[part])} images, {how[part]}")
    return data


def _screening_line(classes: Classes) -> str:
    if classes.negative is None:
        return "no negative class: the decision is argmax"
    return f"negative {classes.negative}; critical {classes.critical_label}"


def _check_every_class_has_films(pix: Any, classes: Classes) -> None:
    """A class of the data (a ``ClassLabel`` name) with no readable film cannot be learnt: refused, by name."""
    counts = np.bincount(np.asarray(pix["label"], dtype=np.int64), minlength=len(classes))
    empty = [name for name, n in zip(classes.names, counts) if n == 0]
    if empty:
        raise CXRError(
            f"class(es) with no films in --data: {', '.join(empty)}; remove them from the data or merge them into "
            "another with --label-map NAME=CLASS"
        )
