"""Radiographs as a Hugging Face ``datasets`` dataset, checked, with a resized-pixel cache.

``--data`` is a local folder in the Kaggle layout (``<Class>/images/*.png``, masks ignored, or
flat ``<Class>/*.png``), a local folder of a saved/parquet dataset, or a Hub dataset id. All of
them become a :class:`datasets.Dataset` with columns ``image`` (:class:`datasets.Image`),
``file_name`` (``<Class>/<basename>``, the key split files use) and ``label``
(:class:`datasets.ClassLabel` named exactly :data:`cxr.labels.CLASS_NAMES`).

A Hub dataset is resolved with ``huggingface_hub`` first (``dataset_info`` gives the commit sha of
``--dataset-revision``, default ``main``; ``snapshot_download`` fetches that commit, without the
Kaggle tree's ``masks/``), then its local snapshot is read like a local folder: class folders with
the folder loader, anything else with ``datasets.load_dataset(snapshot, name=--dataset-config)``.
:func:`load_data_source` also returns the data's own splits (``train``/``test``/...) and a record of
what was loaded (the ``data_source`` of ``run_config.json``).

Decoding is done once: :func:`cache_pixels` decodes every image, converts it to grey and resizes
it to the training size with :meth:`PreprocessConfig.pixels` (the same call evaluation uses), and
stores the uint8 result in an Arrow cache file keyed by the files and the size.

Example:
    >>> ds = load_radiographs("../shared/data/cxr-sample")          # doctest: +SKIP
    >>> ds.features["label"].names  # doctest: +SKIP
    ['COVID', 'Lung_Opacity', 'Normal', 'Viral Pneumonia']
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import datasets
import numpy as np
import pyarrow as pa
import torch

from cxr.data.labelling import ALL_CLASSES, Labelling
from cxr.data.preprocessing import PREPROCESS_VERSION, PreprocessConfig, TrainAugmentation
from cxr.data.sources import read_sources
from cxr.errors import CXRError
from cxr.labels import CLASS_NAMES
from cxr.locations import is_hub_id

__all__ = [
    "default_cache_dir",
    "DataSource",
    "check_data_options",
    "load_data_source",
    "find_dataset_root",
    "scan_image_folder",
    "source_folders",
    "load_radiographs",
    "cache_pixels",
    "PixelCacheResult",
    "RadiographDataset",
]

_logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Where resized pixels are cached unless ``--cache-dir`` says otherwise: ``$CXR_CACHE_DIR`` as it is
    now (read at each use, not at import), else ``~/.cache/cxr``."""
    return Path(os.environ.get("CXR_CACHE_DIR") or Path.home() / ".cache" / "cxr")


_IGNORED_SUBDIRS = ("masks",)
_MAX_LISTED = 20


def _visible(path: Path) -> bool:
    return not path.name.startswith((".", "_"))


def _class_folders(root: Path) -> Dict[str, Path]:
    return {p.name: p for p in root.iterdir() if p.is_dir() and _visible(p) and p.name not in _IGNORED_SUBDIRS}


def find_dataset_root(root: Path, labelling: Labelling = ALL_CLASSES) -> Path:
    """Return the folder that holds the class folders.

    Accepts the folder itself or a wrapper with exactly one sub-folder holding them (a Kaggle
    archive unpacks to ``archive/COVID-19_Radiography_Dataset/<Class>``).
    """
    names = set(_class_folders(root))
    if any(labelling.class_of(n) for n in names):
        return root
    if len(names) == 1:
        inner = root / names.pop()
        if any(labelling.class_of(n) for n in _class_folders(inner)):
            _logger.info("using class folders in %s", inner)
            return inner
    return root


def source_folders(root: Path, labelling: Labelling = ALL_CLASSES) -> Optional[Dict[str, Path]]:
    """``{source: folder}`` when ``root`` holds one sub-folder per source, each with class folders (an
    external set gathered from several hospitals), else ``None``."""
    root = Path(root)
    if not root.is_dir() or not labelling.partial:
        return None
    subs = _class_folders(root)
    if not subs or any(labelling.class_of(n) for n in subs):
        return None
    found = {n: p for n, p in subs.items() if any(labelling.class_of(c) for c in _class_folders(p))}
    return found if len(found) == len(subs) and len(found) > 1 else None


def scan_image_folder(root: os.PathLike, labelling: Labelling = ALL_CLASSES) -> List[Tuple[Path, str, int]]:
    """List the candidate image files of a Kaggle-layout folder, checking the layout.

    Args:
        root: folder with one sub-folder per class; each holds its images directly or in
            ``images/`` (``masks/`` is ignored).
        labelling: which classes must be there and how other folder names map onto ours (default: all four,
            our names).

    Returns:
        ``(path, file_name, label_index)`` tuples, sorted by file name, where ``file_name`` is
        ``<Class>/<basename>`` (our class name).

    Raises:
        CXRError: the folder is missing, a class folder is missing or unknown, or a class has
            no files.
    """
    root = Path(root)
    if not root.is_dir():
        raise CXRError(f"--data folder not found: {root}")
    root = find_dataset_root(root, labelling)
    class_dirs = _class_folders(root)
    try:
        ours = labelling.check(sorted(class_dirs), f"{root} is not in the expected layout", noun="class folder")
    except CXRError as e:
        raise CXRError(f"{e} (Each class folder holds its images directly or in an images/ sub-folder.)") from None
    records: List[Tuple[Path, str, int]] = []
    empty = []
    for name, our in zip(sorted(class_dirs), ours):
        folder = class_dirs[name]
        if (folder / "images").is_dir():
            folder = folder / "images"
        files = sorted(p for p in folder.iterdir() if p.is_file() and _visible(p))
        if not files:
            empty.append(f"{name} ({folder})")
        records.extend((p, f"{our}/{p.name}", CLASS_NAMES.index(our)) for p in files)
    if empty:
        raise CXRError(f"class folder(s) with no images: {', '.join(empty)}")
    seen: Dict[str, Path] = {}
    for path, name, _ in records:
        if name in seen:
            raise CXRError(
                f"{seen[name]} and {path} would both be {name}: two folders mapped onto one class share a file name"
            )
        seen[name] = path
    return sorted(records, key=lambda r: r[1])


def _scan_with_sources(
    root: Path, labelling: Labelling
) -> Tuple[List[Tuple[Path, str, int]], Optional[Dict[str, str]]]:
    """The folder's records and ``{file_name: source}`` — from one sub-folder per source (file names become
    ``<Class>/<source>/<basename>``), or from a ``metadata.csv`` with a source column — or ``None``."""
    per_source = source_folders(root, labelling)
    if per_source is None:
        records = scan_image_folder(root, labelling)
        listed = read_sources(find_dataset_root(root, labelling)) or read_sources(root)
        if not listed:
            return records, None
        sources = {}
        for path, name, _ in records:
            cls, base = name.split("/", 1)
            folder = path.parent.parent.name if path.parent.name == "images" else path.parent.name
            sources[name] = listed.get(name) or listed.get(f"{folder}/{base}") or listed.get(base) or "unknown"
        return records, sources
    records, sources = [], {}
    for source, folder in sorted(per_source.items()):
        for path, name, label in scan_image_folder(folder, labelling):
            cls, base = name.split("/", 1)
            records.append((path, f"{cls}/{source}/{base}", label))
            sources[records[-1][1]] = source
    return sorted(records, key=lambda r: r[1]), sources


def _folder_dataset(
    root: Path, labelling: Labelling = ALL_CLASSES
) -> Tuple[datasets.Dataset, Optional[Dict[str, str]]]:
    records, sources = _scan_with_sources(root, labelling)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "file_name": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(CLASS_NAMES)),
            "file_stat": datasets.Value("string"),
        }
    )
    stats = []
    for path, _, _ in records:
        st = path.stat()
        stats.append(f"{st.st_size}:{st.st_mtime_ns}")
    ds = datasets.Dataset.from_dict(
        {
            "image": [str(p) for p, _, _ in records],
            "file_name": [f for _, f, _ in records],
            "label": [lab for _, _, lab in records],
            "file_stat": stats,
        },
        features=features,
    )
    return ds, sources


def _find_column(features: datasets.Features, kind: type) -> Optional[str]:
    cols = [name for name, f in features.items() if isinstance(f, kind)]
    return cols[0] if cols else None


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


#: Columns of a ``datasets`` dataset that name each film's source (the first present is used).
SOURCE_COLUMNS = ("source_repo", "source")


def _from_datasets(
    loaded: datasets.DatasetDict, what: str, labelling: Labelling = ALL_CLASSES
) -> Tuple[datasets.Dataset, Dict[str, List[str]], Optional[Dict[str, str]]]:
    """Turn every split of a ``load_dataset`` result into the common columns and merge them.

    Returns:
        The merged dataset, ``{split name: file names}`` (the data's own split of its images) and
        ``{file_name: source}`` from a :data:`SOURCE_COLUMNS` column (``None`` without one).
    """
    splits = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    parts, given, sources = [], {}, {}
    for split_name, ds in splits.items():
        image_col = _find_column(ds.features, datasets.Image)
        label_col = _find_column(ds.features, datasets.ClassLabel)
        if image_col is None or label_col is None:
            raise CXRError(
                f"{what} (split {split_name!r}) needs an Image column and a ClassLabel column; "
                f"it has {dict(ds.features)}"
            )
        names = ds.features[label_col].names
        present = sorted(set(ds[label_col])) if labelling.partial else range(len(names))
        labelling.check([names[i] for i in present], f"{what} has classes {names}")
        remap = [CLASS_NAMES.index(labelling.class_of(n)) if labelling.class_of(n) else -1 for n in names]
        source_col = next((c for c in SOURCE_COLUMNS if c in ds.column_names), None)
        split_sources = list(ds[source_col]) if source_col else None
        ds = ds.cast_column(image_col, datasets.Image(decode=False))

        def _rows(batch, indices, _split=split_name, _img=image_col, _lab=label_col, _remap=remap, _fp=ds._fingerprint):
            out_names = []
            for img, idx, lab in zip(batch[_img], indices, batch[_lab]):
                base = os.path.basename(img.get("path") or "") or f"{_split}-{idx:07d}.png"
                out_names.append(f"{CLASS_NAMES[_remap[lab]]}/{base}")
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
                    "label": datasets.ClassLabel(names=list(CLASS_NAMES)),
                    "file_stat": datasets.Value("string"),
                }
            ),
        )
        parts.append(part)
        given[str(split_name)] = list(part["file_name"])
        if split_sources is not None:
            sources.update(zip(given[str(split_name)], (str(v) for v in split_sources)))
    ds = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if len(set(ds["file_name"])) != len(ds):
        raise CXRError(f"{what} has duplicate file names; split files need unique names")
    return ds.cast_column("image", datasets.Image()), given, (sources or None)


def _load_with_datasets(folder: Path, config: Optional[str], what: str) -> datasets.DatasetDict:
    """``datasets.load_dataset`` on a local folder (parquet, imagefolder, README ``configs:``)."""
    try:
        configs = datasets.get_dataset_config_names(str(folder))
    except Exception as e:  # no data files, unreadable README, ...
        raise CXRError(f"{what} is not a dataset cxr can read ({_first_line(e)})") from e
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
        raise CXRError(f"{what} could not be loaded ({_first_line(e)})") from e


def _has_class_folders(path: Path, labelling: Labelling = ALL_CLASSES) -> bool:
    root = find_dataset_root(path, labelling)
    return any(labelling.class_of(n) for n in _class_folders(root)) or source_folders(path, labelling) is not None


def _read_as_image_folder(path: Path, labelling: Labelling = ALL_CLASSES) -> bool:
    """Whether a local ``--data`` folder is read by the class-folder loader (else ``datasets.load_dataset``)."""
    return _has_class_folders(path, labelling) or (
        not any(path.glob("**/*.parquet")) and not (path / "dataset_info.json").exists()
    )


def _class_folder_prefix(paths: Sequence[str]) -> Optional[str]:
    """The folder of a repository's file list that holds the class folders (``""``: the top), if any.

    Mirrors :func:`find_dataset_root`: the class folders themselves, or one wrapper folder around them.
    """

    def subdirs(prefix: str) -> set:
        rests = [p[len(prefix) :] for p in paths if p.startswith(prefix)]
        return {r.split("/")[0] for r in rests if "/" in r and not r.startswith((".", "_"))}

    top = subdirs("")
    if top & set(CLASS_NAMES):
        return ""
    if len(top) == 1:
        wrapper = f"{next(iter(top))}/"
        if subdirs(wrapper) & set(CLASS_NAMES):
            return wrapper
    return None


def _download_patterns(paths: Sequence[str]) -> Tuple[Optional[List[str]], Optional[List[str]]]:
    """``(allow_patterns, ignore_patterns)`` for a repository's files: for the Kaggle tree only the class
    folders' images, never the masks; otherwise everything."""
    wrapper = _class_folder_prefix(paths)
    if wrapper is None:
        return None, None
    return [f"{wrapper}{c}/*" for c in CLASS_NAMES], [f"{wrapper}*/masks/*"]


def _hub_snapshot(repo_id: str, revision: Optional[str]) -> Tuple[Path, str, bool]:
    """Resolve a Hub dataset repository at ``revision`` and download that commit (or find it cached).

    Returns:
        ``(snapshot folder, commit sha, whether it came from the local cache without the Hub)``.
    """
    import httpx
    from huggingface_hub import HfApi, constants, get_cached_repo_tree, snapshot_download
    from huggingface_hub.errors import (
        CachedRepoTreeNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    rev = revision or "main"
    prefix = f"--data {repo_id!r} is neither a local image folder nor a loadable dataset"
    try:
        info = HfApi().dataset_info(repo_id, revision=rev)
    except RevisionNotFoundError as e:
        raise CXRError(
            f"--dataset-revision {rev!r}: no such branch, tag or commit in the Hub dataset {repo_id!r}"
        ) from e
    except GatedRepoError as e:
        raise CXRError(
            f"the Hub dataset {repo_id!r} is gated: accept its terms on the Hub and log in "
            "(`hf auth login` or HF_TOKEN)"
        ) from e
    except RepositoryNotFoundError as e:
        raise CXRError(
            f"{prefix}: no dataset repository {repo_id!r} on the Hub ({constants.ENDPOINT}); "
            "if it is private, log in (`hf auth login` or HF_TOKEN)"
        ) from e
    except (ConnectionError, httpx.TransportError) as e:  # OfflineModeIsEnabled is a ConnectionError
        why = (
            "the Hub is offline (HF_HUB_OFFLINE=1)"
            if isinstance(e, OfflineModeIsEnabled)
            else f"the Hub cannot be reached ({_first_line(e)})"
        )
        try:  # the commit a previous download of this revision fetched, with the same files
            allow, ignore = _download_patterns(
                [f.path for f in get_cached_repo_tree(repo_id, repo_type="dataset", revision=rev)]
            )
            folder = Path(
                snapshot_download(
                    repo_id,
                    repo_type="dataset",
                    revision=rev,
                    local_files_only=True,
                    allow_patterns=allow,
                    ignore_patterns=ignore,
                )
            )
        except (CachedRepoTreeNotFoundError, LocalEntryNotFoundError, OSError) as e2:
            raise CXRError(
                f"{prefix}: {why} and no complete copy of the Hub dataset {repo_id!r} at revision {rev!r} "
                "is cached. Go online once, or pass a local folder."
            ) from e2
        _logger.warning("%s: using the cached copy of %s at %s", why, repo_id, folder.name)
        return folder, folder.name, True
    except HfHubHTTPError as e:
        raise CXRError(f"{prefix}: the Hub answered {_first_line(e)}") from e
    allow, ignore = _download_patterns([s.rfilename for s in info.siblings or []])
    try:
        folder = Path(
            snapshot_download(repo_id, repo_type="dataset", revision=rev, allow_patterns=allow, ignore_patterns=ignore)
        )
    except (HfHubHTTPError, ConnectionError, httpx.TransportError) as e:
        raise CXRError(f"downloading the Hub dataset {repo_id!r} at {info.sha} failed: {_first_line(e)}") from e
    sha = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else info.sha
    if sha != info.sha:
        _logger.warning("%s moved from %s to %s while it was downloaded; using %s", rev, info.sha, sha, sha)
    return folder, sha, False


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
        if config is not None and _read_as_image_folder(path):
            raise CXRError(
                f"--dataset-config is for datasets with configurations (a Hub dataset or a local parquet "
                f"dataset); --data {data} is an image folder"
            )
    elif (revision is not None or config is not None) and not is_hub_id(data):
        raise CXRError(f"--data folder not found: {data}")


def load_data_source(
    data: str, revision: Optional[str] = None, config: Optional[str] = None, labelling: Labelling = ALL_CLASSES
) -> DataSource:
    """Load ``--data`` with its own splits and a record of what was loaded.

    Args:
        data: a Kaggle-layout folder, a folder ``datasets.load_dataset`` reads (parquet, ...), or a Hub
            dataset id (a repository of parquet/image files with an Image column and a ClassLabel of the four
            class names, or the Kaggle folder tree).
        revision: branch, tag or commit of a Hub dataset (default ``main``).
        config: the dataset's configuration (subset) name.
        labelling: which classes must be present and how the data's names map onto ours (default: all four).

    Raises:
        CXRError: for every layout problem, bad option, missing repository or revision, naming it.
    """
    check_data_options(data, revision, config)
    path = Path(data)
    if path.is_dir():
        info: Dict[str, Any] = {"kind": "folder", "path": data}
        folder, what = path, f"--data {data}"
        if _read_as_image_folder(path, labelling):
            ds, sources = _folder_dataset(path, labelling)
            return DataSource(ds, {}, {**info, "layout": "class folders", "config": None}, sources)
    elif not is_hub_id(data):
        raise CXRError(f"--data folder not found: {data}")
    else:
        folder, sha, cached = _hub_snapshot(data, revision)
        info = {
            "kind": "hub",
            "id": data,
            "revision": sha,
            "requested_revision": revision or "main",
            "from_cache": cached,
        }
        what = f"the Hub dataset {data!r} at {sha[:12]}"
        if _has_class_folders(folder, labelling):
            if config is not None:
                raise CXRError(
                    f"--dataset-config {config!r}: {what} is a tree of class folders, which has no configurations"
                )
            ds, sources = _folder_dataset(folder, labelling)
            return DataSource(ds, {}, {**info, "layout": "class folders", "config": None}, sources)
    ds, given, sources = _from_datasets(_load_with_datasets(folder, config, what), what, labelling)
    return DataSource(ds, given, {**info, "layout": "datasets", "config": config}, sources)


def load_radiographs(data: str, revision: Optional[str] = None, config: Optional[str] = None) -> datasets.Dataset:
    """Load ``--data`` as a dataset with ``image``, ``file_name`` and ``label`` columns: every image of
    every split (see :func:`load_data_source` for the splits and the record of what was loaded).

    Args:
        data: a Kaggle-layout folder, a folder ``datasets.load_dataset`` reads (parquet, ...),
            or a Hub dataset id with an Image column and a ClassLabel of the four class names, or
            holding the Kaggle folder tree.
        revision: branch, tag or commit of a Hub dataset.
        config: the dataset's configuration name.

    Returns:
        The dataset (images not decoded yet); a class-folder layout is sorted by ``file_name``.

    Raises:
        CXRError: for every layout problem, naming it.
    """
    return load_data_source(data, revision, config).dataset


@dataclasses.dataclass
class PixelCacheResult:
    """Output of :func:`cache_pixels`.

    Attributes:
        dataset: the good images, with an extra ``pixels`` column (uint8, ``size x size``).
        bad: ``(file_name, error)`` for every image that could not be decoded.
    """

    dataset: datasets.Dataset
    bad: List[Tuple[str, str]]


def _decode_fn(image_size: int, clahe: bool):
    prep = PreprocessConfig(image_size=image_size, in_chans=1, mean=(0.0,), std=(1.0,), clahe=clahe)

    def fn(example):
        img = example["image"]
        src = img["bytes"] if img.get("bytes") else img["path"]
        try:
            pixels = prep.pixels(src)  # PNG, JPEG or DICOM, by cxr.data.decode like every other path
            error = ""
        except Exception as e:  # any decoder failure is reported with the file's name
            pixels = np.zeros((image_size, image_size), dtype=np.uint8)
            error = f"{type(e).__name__}: {e}"
        return {"pixels": pixels, "decode_error": error}

    return fn


def cache_pixels(
    ds: datasets.Dataset,
    image_size: int,
    cache_dir: Optional[os.PathLike] = None,
    num_proc: Optional[int] = None,
    skip_bad_images: bool = False,
    clahe: bool = False,
) -> PixelCacheResult:
    """Decode, grey and resize every image once, caching the pixels on disk.

    A second call with the same files (names, sizes, modification times) and size reads the
    cache instead of decoding again.

    Args:
        ds: a dataset from :func:`load_radiographs`.
        image_size: side length to resize to.
        cache_dir: folder for the Arrow cache (default :func:`default_cache_dir`).
        num_proc: decoding processes (default: CPU count, at most one per 200 images).
        skip_bad_images: drop undecodable images instead of raising.
        clahe: apply CLAHE before resizing (see :class:`PreprocessConfig`).

    Returns:
        A :class:`PixelCacheResult`.

    Raises:
        CXRError: some images could not be decoded and ``skip_bad_images`` is false, or
            skipping them left a class empty.
    """
    cache_file = _pixel_cache_file(ds, image_size, clahe, Path(cache_dir or default_cache_dir()))
    if num_proc is None:
        num_proc = max(1, min(os.cpu_count() or 1, len(ds) // 200))
    features = ds.features.copy()
    features["image"] = datasets.Image(decode=False)
    features["pixels"] = datasets.Array2D(shape=(image_size, image_size), dtype="uint8")
    features["decode_error"] = datasets.Value("string")
    mapped = ds.cast_column("image", datasets.Image(decode=False)).map(
        _decode_fn(image_size, clahe),
        features=features,
        cache_file_name=str(cache_file),
        load_from_cache_file=True,
        num_proc=num_proc if num_proc > 1 else None,
        desc=f"Decoding and resizing to {image_size}px (cached)",
    )
    mapped, bad = _drop_unreadable(mapped, skip_bad_images)
    return PixelCacheResult(
        dataset=mapped.with_format("numpy", columns=["pixels", "label"], output_all_columns=True), bad=bad
    )


def _pixel_cache_file(ds: datasets.Dataset, image_size: int, clahe: bool, cache_dir: Path) -> Path:
    """The cache file of these files (names, sizes, modification times) at this size and preprocessing version."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256(f"v{PREPROCESS_VERSION}:{image_size}:clahe={clahe}".encode())
    for name, stat in zip(ds["file_name"], ds["file_stat"]):
        h.update(f"{name}\0{stat}\n".encode())
    return cache_dir / f"pixels-{image_size}{'-clahe' if clahe else ''}-{h.hexdigest()[:20]}.arrow"


def _drop_unreadable(mapped: datasets.Dataset, skip: bool) -> Tuple[datasets.Dataset, List[Tuple[str, str]]]:
    """The decoded images without the unreadable ones, and those as ``(file, error)``; an error naming them
    unless ``skip``, or when skipping leaves a class empty."""
    errors = mapped["decode_error"]
    bad_idx = [i for i, e in enumerate(errors) if e]
    bad = [(mapped[i]["file_name"], errors[i]) for i in bad_idx]
    if bad and not skip:
        listed = "\n".join(f"  {n}: {e}" for n, e in bad[:_MAX_LISTED])
        more = f"\n  ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise CXRError(
            f"{len(bad)} file(s) in the data are not readable images:\n{listed}{more}\n"
            "Remove them, or pass --skip-bad-images to skip and count them."
        )
    if bad:
        _logger.warning("skipping %d unreadable image(s): %s", len(bad), ", ".join(n for n, _ in bad[:_MAX_LISTED]))
        bad_set = set(bad_idx)
        mapped = mapped.select([i for i in range(len(mapped)) if i not in bad_set])
        counts = np.bincount(np.asarray(mapped["label"], dtype=np.int64), minlength=len(CLASS_NAMES))
        empty = [CLASS_NAMES[i] for i, c in enumerate(counts) if c == 0]
        if empty:
            raise CXRError(f"after skipping unreadable images, class(es) with no images: {', '.join(empty)}")
    return mapped, bad


class RadiographDataset(torch.utils.data.Dataset):
    """A torch view of cached pixels: ``(input, label, index)`` per image.

    Args:
        ds: the ``dataset`` of a :class:`PixelCacheResult` (numpy format).
        indices: rows of ``ds`` this view serves (a split), or all.
        preprocess: the checkpoint's preprocessing (mean/std, channels).
        augment: a :class:`TrainAugmentation` for training, ``None`` for evaluation.
    """

    def __init__(
        self,
        ds: datasets.Dataset,
        preprocess: PreprocessConfig,
        indices: Optional[Sequence[int]] = None,
        augment: Optional[TrainAugmentation] = None,
    ):
        self.ds = ds
        self.indices = list(range(len(ds))) if indices is None else list(indices)
        self.preprocess = preprocess
        self.augment = augment
        self._arrow: Optional[datasets.Dataset] = None

    def __len__(self) -> int:
        return len(self.indices)

    def labels(self) -> np.ndarray:
        """Labels of the served rows, in order."""
        return np.asarray(self.ds.select(self.indices)["label"], dtype=np.int64)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        row = self.ds[self.indices[i]]
        return self._item(np.asarray(row["pixels"], dtype=np.uint8), int(row["label"]), i)  # numpy format widens uint8

    def __getitems__(self, positions: Sequence[int]) -> List[Dict[str, torch.Tensor]]:
        """The items at ``positions`` from one Arrow read (what a ``DataLoader`` fetches per batch):
        the same items as ``[self[i] for i in positions]``, a tenth of the reading time."""
        if self._arrow is None:
            self._arrow = self.ds.with_format("arrow", columns=["pixels", "label"])
        table = self._arrow[[self.indices[i] for i in positions]]
        column = table.column("pixels").combine_chunks()
        storage = column.storage if isinstance(column, pa.ExtensionArray) else column
        pixels = storage.flatten().flatten().to_numpy().reshape(len(table), *column.type.shape)
        labels = table.column("label").to_numpy()
        return [self._item(px, int(label), i) for px, label, i in zip(pixels, labels, positions)]

    def _item(self, pixels: np.ndarray, label: int, i: int) -> Dict[str, torch.Tensor]:
        if self.augment is not None:
            pixels = self.augment(pixels)
        return {
            "pixel_values": self.preprocess.normalize(pixels),
            "labels": torch.as_tensor(label),
            "index": torch.as_tensor(i),
        }
