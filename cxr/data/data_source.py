"""What ``--data`` names, resolved into one ``datasets`` table: a local folder in the Kaggle layout
(``<Class>/images/*.png``, masks ignored, or flat ``<Class>/*.png``), a local folder of a saved or parquet
dataset, or a Hub dataset id. All of them become a :class:`datasets.Dataset` with columns ``image``
(:class:`datasets.Image`), ``file_name`` (``<Class>/<basename>``, the key split files use) and ``label``
(:class:`datasets.ClassLabel` of the data's classes, sorted, or the model's when evaluating against one:
:mod:`cxr.data.labelling`).

A Hub dataset is resolved with ``huggingface_hub`` first (:func:`cxr.data.hub_snapshot.hub_snapshot`: the commit
sha of ``--dataset-revision``, default ``main``, downloaded without the Kaggle tree's ``masks/``), then its local
snapshot is read like a local folder: class folders with the folder reader (:mod:`cxr.data.folders`), anything
else with ``datasets.load_dataset(snapshot, name=--dataset-config)``. :func:`load_data_source` also returns the
data's own splits (``train``/``test``/...) and a record of what was loaded (the ``data_source`` of
``run_config.json``).

Example:
    >>> ds = load_radiographs("../shared/data/cxr-sample")          # doctest: +SKIP
    >>> ds.features["label"].names  # doctest: +SKIP
    ['COVID', 'Lung_Opacity', 'Normal', 'Viral Pneumonia']
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import datasets

from cxr.data.folders import folder_dataset, has_class_folders, read_as_image_folder
from cxr.data.hub_snapshot import hub_snapshot
from cxr.data.labelling import FROM_DATA, Labelling
from cxr.errors import CXRError, first_line
from cxr.locations import is_hub_id

__all__ = ["SOURCE_COLUMNS", "DataSource", "check_data_options", "load_data_source", "load_radiographs"]


def _find_column(features: datasets.Features, kind: type) -> Optional[str]:
    cols = [name for name, f in features.items() if isinstance(f, kind)]
    return cols[0] if cols else None


#: Columns of a ``datasets`` dataset that name each film's source (the first present is used).
SOURCE_COLUMNS = ("source_repo", "source")


def _from_datasets(
    loaded: datasets.DatasetDict, what: str, labelling: Labelling = FROM_DATA
) -> Tuple[datasets.Dataset, Dict[str, List[str]], Optional[Dict[str, str]]]:
    """Turn every split of a ``load_dataset`` result into the common columns and merge them.

    Returns:
        The merged dataset, ``{split name: file names}`` (the data's own split of its images) and
        ``{file_name: source}`` from a :data:`SOURCE_COLUMNS` column (``None`` without one).
    """
    splits = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    parts, given, sources = [], {}, {}
    for split_name, ds in splits.items():
        part, split_sources = _common_columns(ds, str(split_name), what, labelling)
        parts.append(part)
        given[str(split_name)] = list(part["file_name"])
        if split_sources is not None:
            sources.update(zip(given[str(split_name)], (str(v) for v in split_sources)))
    ds = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if len(set(ds["file_name"])) != len(ds):
        raise CXRError(f"{what} has duplicate file names; split files need unique names")
    return ds.cast_column("image", datasets.Image()), given, (sources or None)


def _common_columns(
    ds: datasets.Dataset, split_name: str, what: str, labelling: Labelling
) -> Tuple[datasets.Dataset, Optional[List[Any]]]:
    """One split of a ``load_dataset`` result in the common columns (``image`` undecoded, ``file_name``,
    ``label`` in our classes, ``file_stat``), and its films' sources when a :data:`SOURCE_COLUMNS` column names
    them."""
    image_col = _find_column(ds.features, datasets.Image)
    label_col = _find_column(ds.features, datasets.ClassLabel)
    if image_col is None or label_col is None:
        raise CXRError(
            f"{what} (split {split_name!r}) needs an Image column and a ClassLabel column; it has {dict(ds.features)}"
        )
    names = ds.features[label_col].names
    present = sorted(set(ds[label_col])) if labelling.partial else range(len(names))
    labelling.check([names[i] for i in present], f"{what} has classes {names}")
    classes = labelling.classes_for(names)
    remap = [classes.index(labelling.class_of(n)) if labelling.class_of(n) else -1 for n in names]
    source_col = next((c for c in SOURCE_COLUMNS if c in ds.column_names), None)
    split_sources = list(ds[source_col]) if source_col else None
    ds = ds.cast_column(image_col, datasets.Image(decode=False))

    def _rows(
        batch,
        indices,
        _split=split_name,
        _img=image_col,
        _lab=label_col,
        _remap=remap,
        _classes=classes,
        _fp=ds._fingerprint,
    ):
        out_names = []
        for img, idx, lab in zip(batch[_img], indices, batch[_lab]):
            base = os.path.basename(img.get("path") or "") or f"{_split}-{idx:07d}.png"
            out_names.append(f"{_classes[_remap[lab]]}/{base}")
        return {
            "image": batch[_img],
            "file_name": out_names,
            "label": [_remap[lab] for lab in batch[_lab]],
            "file_stat": [f"{_fp}:{i}" for i in indices],
        }

    part = ds.map(
        _rows,
        batched=True,
        with_indices=True,
        remove_columns=ds.column_names,
        features=datasets.Features(
            {
                "image": datasets.Image(decode=False),
                "file_name": datasets.Value("string"),
                "label": datasets.ClassLabel(names=list(classes)),
                "file_stat": datasets.Value("string"),
            }
        ),
    )
    return part, split_sources


def _load_with_datasets(folder: Path, config: Optional[str], what: str) -> datasets.DatasetDict:
    """``datasets.load_dataset`` on a local folder (parquet, imagefolder, README ``configs:``)."""
    try:
        configs = datasets.get_dataset_config_names(str(folder))
    except Exception as e:  # no data files, unreadable README, ...
        raise CXRError(f"{what} is not a dataset cxr can read ({first_line(e)})") from e
    if config is not None and config not in configs:
        raise CXRError(f"--dataset-config {config!r}: {what} has no such configuration; it has: {', '.join(configs)}")
    try:
        return datasets.load_dataset(str(folder), name=config)
    except Exception as e:  # datasets raises many types
        if config is None and len(configs) > 1:
            raise CXRError(
                f"{what} has several configurations ({', '.join(configs)}) and no default: "
                "pick one with --dataset-config"
            ) from e
        raise CXRError(f"{what} could not be loaded ({first_line(e)})") from e


@dataclasses.dataclass
class DataSource:
    """What ``--data`` resolved to.

    Attributes:
        dataset: the images, as :func:`load_radiographs` returns them.
        given_splits: the data's own splits, ``{split name: file names}`` as the data names them
            (``{}`` for class folders, which have none).
        info: what was loaded, JSON-ready: ``kind`` (``"hub"`` or ``"folder"``), ``id``, ``revision``
            (the resolved commit sha), ``requested_revision`` and ``from_cache`` for the Hub, ``path`` (as given) for
            a folder, ``layout`` (``"class folders"`` or ``"datasets"``) and ``config``.
        sources: ``{file_name: source}`` when the data names each film's source (one sub-folder per source, a
            ``metadata.csv`` with a source column, or a :data:`SOURCE_COLUMNS` column), else ``None``.
    """

    dataset: datasets.Dataset
    given_splits: Dict[str, List[str]]
    info: Dict[str, Any]
    sources: Optional[Dict[str, str]] = None


def check_data_options(data: str, revision: Optional[str] = None, config: Optional[str] = None) -> None:
    """Check ``--dataset-revision`` and ``--dataset-config`` against ``--data`` before anything runs.

    Raises:
        CXRError: an empty value, a revision for a local folder, or a configuration for an image folder.
    """
    for flag, value in (("--dataset-revision", revision), ("--dataset-config", config)):
        if value is not None and not value.strip():
            raise CXRError(f"{flag} must not be empty")
    path = Path(data)
    if path.is_dir():
        if revision is not None:
            raise CXRError(
                f"--dataset-revision is for Hub datasets (--data ORG/NAME); --data {data} is a local "
                "folder, which has no revisions"
            )
        if config is not None and read_as_image_folder(path):
            raise CXRError(
                f"--dataset-config is for datasets with configurations (a Hub dataset or a local parquet "
                f"dataset); --data {data} is an image folder"
            )
    elif (revision is not None or config is not None) and not is_hub_id(data):
        raise CXRError(f"--data folder not found: {data}")


def load_data_source(
    data: str, revision: Optional[str] = None, config: Optional[str] = None, labelling: Labelling = FROM_DATA
) -> DataSource:
    """Load ``--data`` with its own splits and a record of what was loaded.

    Args:
        data: a Kaggle-layout folder, a folder ``datasets.load_dataset`` reads (parquet, ...), or a Hub
            dataset id (a repository of parquet/image files with an Image column and a ClassLabel column, or a
            tree of class folders).
        revision: branch, tag or commit of a Hub dataset (default ``main``).
        config: the dataset's configuration (subset) name.
        labelling: which classes may be present and how the data's names map onto them (default: the data's own).

    Raises:
        CXRError: for every layout problem, bad option, missing repository or revision, naming it.
    """
    check_data_options(data, revision, config)
    path = Path(data)
    if path.is_dir():
        info: Dict[str, Any] = {"kind": "folder", "path": data}
        folder, what = path, f"--data {data}"
        if read_as_image_folder(path, labelling):
            ds, sources = folder_dataset(path, labelling)
            return DataSource(ds, {}, {**info, "layout": "class folders", "config": None}, sources)
    elif not is_hub_id(data):
        raise CXRError(f"--data folder not found: {data}")
    else:
        folder, sha, cached = hub_snapshot(data, revision)
        info = {
            "kind": "hub",
            "id": data,
            "revision": sha,
            "requested_revision": revision or "main",
            "from_cache": cached,
        }
        what = f"the Hub dataset {data!r} at {sha[:12]}"
        if has_class_folders(folder, labelling):
            if config is not None:
                raise CXRError(
                    f"--dataset-config {config!r}: {what} is a tree of class folders, which has no configurations"
                )
            ds, sources = folder_dataset(folder, labelling)
            return DataSource(ds, {}, {**info, "layout": "class folders", "config": None}, sources)
    ds, given, sources = _from_datasets(_load_with_datasets(folder, config, what), what, labelling)
    return DataSource(ds, given, {**info, "layout": "datasets", "config": config}, sources)


def load_radiographs(data: str, revision: Optional[str] = None, config: Optional[str] = None) -> datasets.Dataset:
    """Load ``--data`` as a dataset with ``image``, ``file_name`` and ``label`` columns: every image of
    every split (see :func:`load_data_source` for the splits and the record of what was loaded).

    Args:
        data: a Kaggle-layout folder, a folder ``datasets.load_dataset`` reads (parquet, ...),
            or a Hub dataset id with an Image column and a ClassLabel column, or holding class folders.
        revision: branch, tag or commit of a Hub dataset.
        config: the dataset's configuration name.

    Returns:
        The dataset (images not decoded yet); a class-folder layout is sorted by ``file_name``.

    Raises:
        CXRError: for every layout problem, naming it.
    """
    return load_data_source(data, revision, config).dataset
