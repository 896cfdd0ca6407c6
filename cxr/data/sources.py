"""Which source each film comes from, as a dataset's ``metadata.csv`` says.

The COVID-19 Radiography Database is assembled from a few public collections, one or two per class; which
collection a film came from is the confounder a model can learn instead of the disease. Its Kaggle copy and the
sets gathered for external validation carry a ``metadata.csv`` naming each film's source.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, Optional

__all__ = ["read_sources"]


def read_sources(data_dir: Path) -> Optional[Dict[str, str]]:
    """``{"<Class>/<file>": source}`` from a ``metadata.csv`` with a source column, else ``None``.

    Accepts the sample's layout (``file_name``, ``label``, ``source_repo``) and similar ones: the file
    column is the first whose name contains "file", the source column the first containing "source"
    (or "url").
    """
    path = Path(data_dir) / "metadata.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        file_col = next((c for c in cols if "file" in c.lower()), None)
        source_col = next(
            (c for c in cols if "source" in c.lower() and "commit" not in c.lower() and "path" not in c.lower()), None
        ) or next((c for c in cols if "url" in c.lower()), None)
        label_col = next((c for c in cols if c.lower() in ("label", "class")), None)
        if not file_col or not source_col:
            return None
        out = {}
        for row in reader:
            name = Path(row[file_col]).name
            key = f"{row[label_col]}/{name}" if label_col else name
            out[key] = row[source_col]
    return out
