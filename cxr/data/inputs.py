"""The films a command is pointed at: files, folders (searched recursively) and glob patterns.

:func:`find_films` expands a command line's inputs into a sorted list of files, each once. A folder gives its
PNG, JPEG and DICOM files (by suffix, and files without a suffix, as DICOM files often are); other files in it
are counted, not listed. A named file is taken whatever its suffix (the decoder then says what it is). An input
that names nothing is an error before any model loads.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from pathlib import Path
from typing import List, Sequence

from cxr.data.decode import UPLOAD_SUFFIXES
from cxr.errors import CXRError

__all__ = ["FoundFilms", "find_films"]


@dataclasses.dataclass
class FoundFilms:
    """The files found, sorted, each once; and how many files in the folders were of other types."""

    files: List[Path]
    other_files: int = 0


def _is_film_name(path: Path) -> bool:
    return path.suffix.lower() in UPLOAD_SUFFIXES or path.suffix == ""


def _in_folder(folder: Path, found: FoundFilms) -> List[Path]:
    films = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(root) / name
            if _is_film_name(path):
                films.append(path)
            else:
                found.other_files += 1
    return films


def find_films(inputs: Sequence[str]) -> FoundFilms:
    """Expand ``inputs`` (files, folders, glob patterns such as ``scans/**/*.dcm``).

    Raises:
        CXRError: an input that is neither a file, nor a folder, nor a pattern matching anything; or no film in
            any of them.
    """
    found = FoundFilms([])
    seen = set()
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            films = _in_folder(path, found)
        elif path.is_file():
            films = [path]
        elif glob.has_magic(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            if not matches:
                raise CXRError(f"no file matches {text!r}")
            films = []
            for m in matches:
                films += _in_folder(m, found) if m.is_dir() else [m]
        else:
            raise CXRError(f"input not found: {text}")
        for film in films:
            key = film.resolve()
            if key not in seen:
                seen.add(key)
                found.files.append(film)
    if not found.files:
        other = f" (only {found.other_files} file(s) of other types)" if found.other_files else ""
        raise CXRError(f"no PNG, JPEG or DICOM file (nor a file without a suffix) in {', '.join(inputs)}{other}")
    return found
