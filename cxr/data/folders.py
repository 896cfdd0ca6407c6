"""Image folders in the Kaggle layout: where the class folders are (the top, or one wrapper folder), one
sub-folder per source, and every image file as ``(path, file_name, label)`` — the class-folder reader of
:func:`cxr.data.data_source.load_data_source`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import datasets

from cxr.data.image_limits import UPLOAD_SUFFIXES
from cxr.data.labelling import FROM_DATA, Labelling
from cxr.data.sources import read_sources
from cxr.errors import CXRError

__all__ = [
    "find_dataset_root",
    "source_folders",
    "scan_image_folder",
    "folder_dataset",
    "folder_classes",
    "has_class_folders",
    "read_as_image_folder",
    "MAX_LISTED",
]

_logger = logging.getLogger(__name__)

_IGNORED_SUBDIRS = ("masks",)
MAX_LISTED = 20


def _visible(name: str) -> bool:
    return not name.startswith((".", "_"))


def _files_in(folder: Path) -> List[Path]:
    """The visible files of ``folder`` (symbolic links followed), sorted by name. ``os.scandir`` reads each entry's
    type from the folder itself, and names sort as strings: ``Path.is_file`` and sorting paths would cost a
    ``stat`` and a comparison of parts per file (bench/RESULTS.md, "Scale")."""
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if _visible(e.name) and e.is_file())
    return [folder / n for n in names]


def _class_folders(root: Path) -> Dict[str, Path]:
    return {p.name: p for p in root.iterdir() if p.is_dir() and _visible(p.name) and p.name not in _IGNORED_SUBDIRS}


def _holds_films(folder: Path) -> bool:
    """Whether ``folder`` is a class folder: an ``images/`` sub-folder, or image files of its own."""
    if (folder / "images").is_dir():
        return True
    return any(p.is_file() and _visible(p.name) and p.suffix.lower() in UPLOAD_SUFFIXES for p in folder.iterdir())


def _holds_classes(folder: Path, labelling: Labelling) -> bool:
    subs = _class_folders(folder)
    if labelling.classes is not None:
        return any(labelling.class_of(n) for n in subs)
    return any(_holds_films(p) for p in subs.values())


def find_dataset_root(root: Path, labelling: Labelling = FROM_DATA) -> Path:
    """Return the folder that holds the class folders.

    Accepts the folder itself or a wrapper with exactly one sub-folder holding them (a Kaggle
    archive unpacks to ``archive/COVID-19_Radiography_Dataset/<Class>``). With the data's own classes, a class
    folder is one holding image files or an ``images/`` folder; with a model's, one named (or mapped) as its class.
    """
    if _holds_classes(root, labelling):
        return root
    names = set(_class_folders(root))
    if len(names) == 1:
        inner = root / names.pop()
        if _holds_classes(inner, labelling):
            _logger.info("using class folders in %s", inner)
            return inner
    return root


def source_folders(root: Path, labelling: Labelling = FROM_DATA) -> Optional[Dict[str, Path]]:
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


def scan_image_folder(root: os.PathLike, labelling: Labelling = FROM_DATA) -> List[Tuple[Path, str, int]]:
    """List the candidate image files of a Kaggle-layout folder, checking the layout.

    Args:
        root: folder with one sub-folder per class; each holds its images directly or in
            ``images/`` (``masks/`` is ignored).
        labelling: which classes may be there and how folder names map onto them (default: the folders' own
            names, each a class).

    Returns:
        ``(path, file_name, label_index)`` tuples, sorted by file name, where ``file_name`` is
        ``<Class>/<basename>`` (the class name) and the index is into :func:`folder_classes`.

    Raises:
        CXRError: the folder is missing, a class folder is missing or unknown, or a class has
            no files.
    """
    root = Path(root)
    if not root.is_dir():
        raise CXRError(f"--data folder not found: {root}")
    root = find_dataset_root(root, labelling)
    class_dirs = _class_folders(root)
    if not class_dirs:
        raise CXRError(
            f"{root} holds no class folder: put each class's films in a folder named after the class "
            "(or mapped onto it with --label-map NAME=CLASS)"
        )
    try:
        ours = labelling.check(sorted(class_dirs), f"{root} is not in the expected layout", noun="class folder")
    except CXRError as e:
        raise CXRError(f"{e} (Each class folder holds its images directly or in an images/ sub-folder.)") from None
    classes = labelling.classes_for(sorted(class_dirs))
    records: List[Tuple[Path, str, int]] = []
    empty = []
    for name, our in zip(sorted(class_dirs), ours):
        folder = class_dirs[name]
        if (folder / "images").is_dir():
            folder = folder / "images"
        files = _files_in(folder)
        if not files:
            empty.append(f"{name} ({folder})")
        records.extend((p, f"{our}/{p.name}", classes.index(our)) for p in files)
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


def folder_classes(root: os.PathLike, labelling: Labelling = FROM_DATA) -> Tuple[str, ...]:
    """The classes of a Kaggle-layout folder, in label-index order: the model's, or the class folders' (mapped)."""
    if labelling.classes is not None:
        return labelling.classes
    return labelling.classes_for(sorted(_class_folders(find_dataset_root(Path(root), labelling))))


def folder_dataset(root: Path, labelling: Labelling = FROM_DATA) -> Tuple[datasets.Dataset, Optional[Dict[str, str]]]:
    records, sources = _scan_with_sources(root, labelling)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "file_name": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(folder_classes(root, labelling))),
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


def has_class_folders(path: Path, labelling: Labelling = FROM_DATA) -> bool:
    return _holds_classes(find_dataset_root(path, labelling), labelling) or source_folders(path, labelling) is not None


def read_as_image_folder(path: Path, labelling: Labelling = FROM_DATA) -> bool:
    """Whether a local ``--data`` folder is read by the class-folder loader (else ``datasets.load_dataset``)."""
    return has_class_folders(path, labelling) or (
        not any(path.glob("**/*.parquet")) and not (path / "dataset_info.json").exists()
    )
