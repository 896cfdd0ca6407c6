"""Stratified, deterministic train/validation/test splits, saved as file-name lists.

The split depends only on the file names, their labels and the seed (NumPy's PCG64 generator,
identical on every platform), so the same data and seed give the same split everywhere. A split
file written by one run can be given to another (``--split-file``) so models are compared on the
same test images.

A dataset that comes with its own splits keeps them: :func:`complete_split` makes only the parts it
lacks (a validation part carved from train, stratified; or the whole 80/10/10 when it has only one split).

Example:
    >>> names = [f"COVID/{i}.png" for i in range(10)] + [f"Normal/{i}.png" for i in range(10)]
    >>> split = stratified_split(names, [0] * 10 + [2] * 10, seed=1)
    >>> [len(split[s]) for s in SPLITS]
    [16, 2, 2]
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from cxr.data.content import is_digest
from cxr.errors import CXRError

__all__ = [
    "SPLITS",
    "SPLIT_ALIASES",
    "DEFAULT_FRACTIONS",
    "stratified_split",
    "complete_split",
    "save_split",
    "load_split",
    "load_split_content",
    "indices_for_split",
]

_logger = logging.getLogger(__name__)

SPLITS: Tuple[str, ...] = ("train", "validation", "test")
DEFAULT_FRACTIONS: Tuple[float, float, float] = (0.8, 0.1, 0.1)
#: The split names a dataset may use for each part: ``datasets``' own keywords for split file names
#: (``data/valid-*.parquet`` loads as ``validation``, ``data/eval-*.parquet`` as ``test``).
SPLIT_ALIASES: Dict[str, Tuple[str, ...]] = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def stratified_split(
    file_names: Sequence[str],
    labels: Sequence[int],
    seed: int = 1,
    fractions: Tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> Dict[str, List[str]]:
    """Split file names per class into train/validation/test.

    Within each class the names are sorted, shuffled with ``default_rng([seed, label])`` and
    cut into validation and test shares of ``round(n * fraction)`` (at least one each when the
    class has three or more images); the rest trains.

    Args:
        file_names: unique keys (``<Class>/<basename>``).
        labels: class index per file.
        seed: the split seed (the study used 1).
        fractions: train, validation, test shares summing to 1.

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``, each sorted.
    """
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    if len(set(file_names)) != len(file_names):
        raise CXRError("file names must be unique to be split")
    by_class: Dict[int, List[str]] = {}
    for name, lab in zip(file_names, labels):
        by_class.setdefault(int(lab), []).append(name)
    out: Dict[str, List[str]] = {s: [] for s in SPLITS}
    for lab in sorted(by_class):
        names = sorted(by_class[lab])
        order = np.random.default_rng([seed, lab]).permutation(len(names))
        names = [names[i] for i in order]
        n = len(names)
        n_val, n_test = _round_half_up(n * fractions[1]), _round_half_up(n * fractions[2])
        if n >= 3:
            n_val, n_test = max(n_val, 1 if fractions[1] > 0 else 0), max(n_test, 1 if fractions[2] > 0 else 0)
        out["validation"] += names[:n_val]
        out["test"] += names[n_val : n_val + n_test]
        out["train"] += names[n_val + n_test :]
    return {s: sorted(v) for s, v in out.items()}


def _share(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def complete_split(
    file_names: Sequence[str],
    labels: Sequence[int],
    given: Dict[str, List[str]],
    seed: int = 1,
) -> Tuple[Dict[str, List[str]], Dict[str, str]]:
    """Keep the data's own train/validation/test splits and make only the parts it lacks.

    * no splits (class folders): the stratified 80/10/10 split of all images;
    * only ``train``: the stratified 80/10/10 split of it;
    * ``train`` and ``test`` (or ``train`` and ``validation``): the missing part is carved from train,
      stratified, 1/9 of it (80/10/10 overall when the given test part is 10%);
    * all three: kept as they are.

    Split names are matched through :data:`SPLIT_ALIASES` (case-insensitive). Given file names that
    are not in ``file_names`` (skipped unreadable images) are left out.

    Args:
        file_names: the keys of the loaded images.
        labels: class index per file.
        given: ``{split name as the data names it: file names}``.
        seed: the split seed.

    Returns:
        ``(split, how)``: the split as :func:`stratified_split` returns it, and one line per part
        saying where it came from.

    Raises:
        CXRError: a split name that is none of the aliases, two splits for one part, or no train split.
    """
    label_of = dict(zip(file_names, (int(x) for x in labels)))
    if not given:
        split = stratified_split(file_names, labels, seed=seed)
        return split, {
            part: f"made: {_share(f)} of the {len(file_names)} images, stratified by class (seed {seed})"
            for part, f in zip(SPLITS, DEFAULT_FRACTIONS)
        }
    source = _given_parts(given)
    kept = {part: sorted(n for n in given[name] if n in label_of) for part, name in source.items()}
    how = {part: f"the dataset's own {name!r} split" for part, name in source.items()}
    missing = [part for part in SPLITS if part not in kept]
    if missing:
        train = kept["train"]
        if len(missing) == 2:
            fractions = DEFAULT_FRACTIONS
        else:
            fractions = (8 / 9, 1 / 9, 0.0) if missing == ["validation"] else (8 / 9, 0.0, 1 / 9)
        carved = stratified_split(train, [label_of[n] for n in train], seed=seed, fractions=fractions)
        for part in SPLITS:
            if part in missing:
                kept[part] = carved[part]
                share = "1/9" if len(missing) == 1 else _share(fractions[SPLITS.index(part)])
                how[part] = f"carved from {source['train']!r}: {share} of it, stratified by class (seed {seed})"
        kept["train"] = carved["train"]
        how["train"] += f", less the {' and '.join(missing)} part{'s' if len(missing) > 1 else ''} carved from it"
    return {part: kept[part] for part in SPLITS}, {part: how[part] for part in SPLITS}


def _given_parts(given: Dict[str, List[str]]) -> Dict[str, str]:
    """``{part: the data's own split name}`` for each of train/validation/test the data gives (names matched
    through :data:`SPLIT_ALIASES`, case-insensitive).

    Raises:
        CXRError: a split name that is none of the aliases, two splits for one part, or no train split.
    """
    part_of = {alias: part for part, aliases in SPLIT_ALIASES.items() for alias in aliases}
    unknown = sorted(name for name in given if name.lower() not in part_of)
    if unknown:
        known = "; ".join(f"{part}: {', '.join(a)}" for part, a in SPLIT_ALIASES.items())
        raise CXRError(
            f"the dataset's split(s) {', '.join(repr(u) for u in unknown)} are not train, validation or test "
            f"(names understood: {known}); pass --split-file to say which images go where"
        )
    source: Dict[str, str] = {}
    for name in sorted(given):
        part = part_of[name.lower()]
        if part in source:
            raise CXRError(
                f"the dataset has two {part} splits, {source[part]!r} and {name!r}; pass --split-file "
                "to say which images go where"
            )
        source[part] = name
    if "train" not in source:
        raise CXRError(
            f"the dataset has no train split (it has {', '.join(repr(n) for n in sorted(given))}); "
            "pass --split-file to say which images train"
        )
    return source


def save_split(
    path: os.PathLike,
    split: Dict[str, List[str]],
    seed: int,
    fractions=DEFAULT_FRACTIONS,
    content: Optional[Mapping[str, str]] = None,
) -> None:
    """Write a split as JSON: the seed, the fractions and the file names of each part and, with ``content``
    (``{file_name: digest}``, :func:`cxr.data.content.content_digests`), each named film's content digest under
    ``"content"``, so that a film is known by its bytes whatever it is called (:func:`load_split_content`)."""
    payload = {"seed": seed, "fractions": list(fractions), **{s: list(split[s]) for s in SPLITS}}
    if content is not None:
        payload["content"] = {name: content[name] for s in SPLITS for name in split[s] if name in content}
    Path(path).write_text(json.dumps(payload, indent=1) + "\n")


def load_split(path: os.PathLike) -> Dict[str, List[str]]:
    """Read a split file written by :func:`save_split`.

    Raises:
        CXRError: the file is missing, not JSON, lacks a part, or names a file twice.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise CXRError(f"--split-file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise CXRError(f"--split-file {path} is not valid JSON: {e}") from None
    missing = [s for s in SPLITS if not isinstance(payload.get(s), list)]
    if missing:
        raise CXRError(f"--split-file {path} lacks the list(s): {', '.join(missing)}")
    seen: Dict[str, str] = {}
    for s in SPLITS:
        for name in payload[s]:
            if name in seen:
                raise CXRError(f"--split-file {path} puts {name!r} in both {seen[name]} and {s}")
            seen[name] = s
    return {s: list(payload[s]) for s in SPLITS}


def load_split_content(path: os.PathLike) -> Dict[str, str]:
    """The content digests a split file holds (``{file_name: digest}``, :func:`save_split`); empty for a file
    written without them.

    Raises:
        CXRError: the file is missing, not JSON, or its ``"content"`` is not a map of names to digests.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text()).get("content", {})
    except FileNotFoundError:
        raise CXRError(f"split file not found: {path}") from None
    except (json.JSONDecodeError, AttributeError) as e:
        raise CXRError(f"split file {path} is not a JSON object: {e}") from None
    if not isinstance(content, dict) or not all(is_digest(v) for v in content.values()):
        raise CXRError(f"split file {path}: its content is not a map of file names to digests")
    return dict(content)


def indices_for_split(file_names: Sequence[str], split: Dict[str, List[str]]) -> Dict[str, List[int]]:
    """Map each part of a split to row indices of a dataset.

    Files of the data that the split does not name are left out (with a warning); a file the
    split names that is not in the data is an error, since results would no longer be comparable.
    """
    row = {name: i for i, name in enumerate(file_names)}
    absent = [n for s in SPLITS for n in split[s] if n not in row]
    if absent:
        raise CXRError(
            f"the split file names {len(absent)} file(s) not in the data (first: {', '.join(absent[:5])}); "
            "was it written for another data folder?"
        )
    out = {s: [row[n] for n in split[s]] for s in SPLITS}
    unassigned = len(file_names) - sum(len(v) for v in out.values())
    if unassigned:
        _logger.warning("%d image(s) in the data are in no part of the split file and are not used", unassigned)
    for s in SPLITS:
        if not out[s]:
            raise CXRError(f"the {s} part of the split is empty")
    return out
