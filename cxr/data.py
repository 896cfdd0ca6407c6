"""Radiographs as a Hugging Face ``datasets`` dataset, checked, with a resized-pixel cache.

``--data`` is a local folder in the Kaggle layout (``<Class>/images/*.png``, masks ignored, or
flat ``<Class>/*.png``), a local folder of a saved/parquet dataset, or a Hub dataset id. All of
them become a :class:`datasets.Dataset` with columns ``image`` (:class:`datasets.Image`),
``file_name`` (``<Class>/<basename>``, the key split files use) and ``label``
(:class:`datasets.ClassLabel` named exactly :data:`cxr.labels.CLASS_NAMES`).

Decoding is done once: :func:`cache_pixels` decodes every image, converts it to grey and resizes
it to the training size with :meth:`PreprocessConfig.pixels` (the same call evaluation uses), and
stores the uint8 result in an Arrow cache file keyed by the files and the size.

Example:
    >>> ds = load_radiographs("../shared/data/cxr-sample")          # doctest: +SKIP
    >>> ds.features["label"].names
    ['COVID', 'Lung_Opacity', 'Normal', 'Viral Pneumonia']
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import datasets
import numpy as np
import pyarrow as pa
import torch

from .errors import CXRError
from .labels import CLASS_NAMES
from .preprocessing import PREPROCESS_VERSION, PreprocessConfig, TrainAugmentation

__all__ = [
    "DEFAULT_CACHE_DIR",
    "find_dataset_root",
    "scan_image_folder",
    "load_radiographs",
    "cache_pixels",
    "PixelCacheResult",
    "RadiographDataset",
]

_logger = logging.getLogger(__name__)

#: Where resized pixels are cached unless ``--cache-dir`` / ``CXR_CACHE_DIR`` says otherwise.
DEFAULT_CACHE_DIR = Path(os.environ.get("CXR_CACHE_DIR", Path.home() / ".cache" / "cxr"))

_IGNORED_SUBDIRS = ("masks",)
_MAX_LISTED = 20


def _visible(path: Path) -> bool:
    return not path.name.startswith((".", "_"))


def find_dataset_root(root: Path) -> Path:
    """Return the folder that holds the class folders.

    Accepts the folder itself or a wrapper with exactly one sub-folder holding them (a Kaggle
    archive unpacks to ``archive/COVID-19_Radiography_Dataset/<Class>``).
    """
    names = {p.name for p in root.iterdir() if p.is_dir() and _visible(p)}
    if names & set(CLASS_NAMES):
        return root
    if len(names) == 1:
        inner = root / names.pop()
        inner_names = {p.name for p in inner.iterdir() if p.is_dir() and _visible(p)}
        if inner_names & set(CLASS_NAMES):
            _logger.info("using class folders in %s", inner)
            return inner
    return root


def scan_image_folder(root: os.PathLike) -> List[Tuple[Path, str, int]]:
    """List the candidate image files of a Kaggle-layout folder, checking the layout.

    Args:
        root: folder with one sub-folder per class; each holds its images directly or in
            ``images/`` (``masks/`` is ignored).

    Returns:
        ``(path, file_name, label_index)`` tuples, sorted by file name, where ``file_name`` is
        ``<Class>/<basename>``.

    Raises:
        CXRError: the folder is missing, a class folder is missing or unknown, or a class has
            no files.
    """
    root = Path(root)
    if not root.is_dir():
        raise CXRError(f"--data folder not found: {root}")
    root = find_dataset_root(root)
    class_dirs = {p.name: p for p in root.iterdir() if p.is_dir() and _visible(p)}
    unknown = sorted(set(class_dirs) - set(CLASS_NAMES))
    missing = [c for c in CLASS_NAMES if c not in class_dirs]
    problems = []
    if unknown:
        problems.append(f"unknown class folder(s): {', '.join(repr(u) for u in unknown)}")
    if missing:
        problems.append(f"missing class folder(s): {', '.join(repr(m) for m in missing)}")
    if problems:
        raise CXRError(
            f"{root} is not in the expected layout: {'; '.join(problems)}. "
            f"Expected exactly one folder per class: {', '.join(CLASS_NAMES)} "
            "(each holding its images directly or in an images/ sub-folder)."
        )
    records: List[Tuple[Path, str, int]] = []
    empty = []
    for label, name in enumerate(CLASS_NAMES):
        folder = class_dirs[name]
        if (folder / "images").is_dir():
            folder = folder / "images"
        files = sorted(p for p in folder.iterdir() if p.is_file() and _visible(p))
        if not files:
            empty.append(f"{name} ({folder})")
        records.extend((p, f"{name}/{p.name}", label) for p in files)
    if empty:
        raise CXRError(f"class folder(s) with no images: {', '.join(empty)}")
    return sorted(records, key=lambda r: r[1])


def _folder_dataset(root: Path) -> datasets.Dataset:
    records = scan_image_folder(root)
    features = datasets.Features({
        "image": datasets.Image(),
        "file_name": datasets.Value("string"),
        "label": datasets.ClassLabel(names=list(CLASS_NAMES)),
        "file_stat": datasets.Value("string"),
    })
    stats = []
    for path, _, _ in records:
        st = path.stat()
        stats.append(f"{st.st_size}:{st.st_mtime_ns}")
    return datasets.Dataset.from_dict(
        {
            "image": [str(p) for p, _, _ in records],
            "file_name": [f for _, f, _ in records],
            "label": [lab for _, _, lab in records],
            "file_stat": stats,
        },
        features=features,
    )


def _find_column(features: datasets.Features, kind: type) -> Optional[str]:
    cols = [name for name, f in features.items() if isinstance(f, kind)]
    return cols[0] if cols else None


def _hub_dataset(data: str) -> datasets.Dataset:
    try:
        loaded = datasets.load_dataset(data)
    except Exception as e:  # datasets raises many types for "not found" / offline
        raise CXRError(
            f"--data {data!r} is neither a local image folder nor a loadable dataset "
            f"({type(e).__name__}: {e}). Offline (HF_HUB_OFFLINE=1), only local folders work."
        ) from e
    splits = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    parts = []
    for split_name, ds in splits.items():
        image_col = _find_column(ds.features, datasets.Image)
        label_col = _find_column(ds.features, datasets.ClassLabel)
        if image_col is None or label_col is None:
            raise CXRError(
                f"dataset {data!r} (split {split_name!r}) needs an Image column and a ClassLabel column; "
                f"it has {dict(ds.features)}"
            )
        names = ds.features[label_col].names
        if sorted(names) != sorted(CLASS_NAMES):
            raise CXRError(
                f"dataset {data!r} has classes {names}; expected exactly {list(CLASS_NAMES)}"
            )
        remap = [CLASS_NAMES.index(n) for n in names]
        ds = ds.cast_column(image_col, datasets.Image(decode=False))

        def _rows(batch, indices, _split=split_name, _img=image_col, _lab=label_col, _remap=remap):
            out_names = []
            for img, idx, lab in zip(batch[_img], indices, batch[_lab]):
                base = os.path.basename(img.get("path") or "") or f"{_split}-{idx:07d}.png"
                out_names.append(f"{CLASS_NAMES[_remap[lab]]}/{base}")
            return {
                "image": batch[_img],
                "file_name": out_names,
                "label": [_remap[lab] for lab in batch[_lab]],
                "file_stat": [f"{ds._fingerprint}:{i}" for i in indices],
            }

        parts.append(ds.map(
            _rows,
            batched=True,
            with_indices=True,
            remove_columns=ds.column_names,
            features=datasets.Features({
                "image": datasets.Image(decode=False),
                "file_name": datasets.Value("string"),
                "label": datasets.ClassLabel(names=list(CLASS_NAMES)),
                "file_stat": datasets.Value("string"),
            }),
        ))
    ds = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if len(set(ds["file_name"])) != len(ds):
        raise CXRError(f"dataset {data!r} has duplicate file names; split files need unique names")
    return ds.cast_column("image", datasets.Image())


def load_radiographs(data: str) -> datasets.Dataset:
    """Load ``--data`` as a dataset with ``image``, ``file_name`` and ``label`` columns.

    Args:
        data: a Kaggle-layout folder, a folder ``datasets.load_dataset`` reads (parquet, ...),
            or a Hub dataset id with an Image column and a ClassLabel of the four class names.

    Returns:
        The dataset (images not decoded yet), sorted by ``file_name``.

    Raises:
        CXRError: for every layout problem, naming it.
    """
    path = Path(data)
    if path.is_dir():
        root = find_dataset_root(path)
        has_class_dirs = any((root / c).is_dir() for c in CLASS_NAMES)
        if has_class_dirs or not any(path.glob("**/*.parquet")) and not (path / "dataset_info.json").exists():
            return _folder_dataset(path)
    elif not _looks_like_repo_id(data):
        raise CXRError(f"--data folder not found: {data}")
    return _hub_dataset(data)


def _looks_like_repo_id(data: str) -> bool:
    parts = data.split("/")
    return len(parts) in (1, 2) and all(parts) and not data.startswith((".", "~")) and "\\" not in data


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
            if isinstance(src, bytes):
                import io

                src = io.BytesIO(src)
            pixels = prep.pixels(src)
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
        cache_dir: folder for the Arrow cache (default :data:`DEFAULT_CACHE_DIR`).
        num_proc: decoding processes (default: CPU count, at most one per 200 images).
        skip_bad_images: drop undecodable images instead of raising.
        clahe: apply CLAHE before resizing (see :class:`PreprocessConfig`).

    Returns:
        A :class:`PixelCacheResult`.

    Raises:
        CXRError: some images could not be decoded and ``skip_bad_images`` is false, or
            skipping them left a class empty.
    """
    cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR)
    cache_dir.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256(f"v{PREPROCESS_VERSION}:{image_size}:clahe={clahe}".encode())
    for name, stat in zip(ds["file_name"], ds["file_stat"]):
        h.update(f"{name}\0{stat}\n".encode())
    cache_file = cache_dir / f"pixels-{image_size}{'-clahe' if clahe else ''}-{h.hexdigest()[:20]}.arrow"
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
    errors = mapped["decode_error"]
    bad_idx = [i for i, e in enumerate(errors) if e]
    bad = [(mapped[i]["file_name"], errors[i]) for i in bad_idx]
    if bad and not skip_bad_images:
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
    return PixelCacheResult(
        dataset=mapped.with_format("numpy", columns=["pixels", "label"], output_all_columns=True), bad=bad
    )


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
