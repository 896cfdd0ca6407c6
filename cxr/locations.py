"""Where a ``--model`` or ``--data`` value points: a local path, or a Hugging Face Hub repository id.

One rule for every command (models, datasets, model cards and the app): a value is a Hub id when it is not
an existing path, does not start like a path (``.``, ``/``, ``~``), has no backslash, and has one or two
non-empty parts (``name`` or ``org/name``).

Example:
    >>> is_hub_id("cxr-demo/lite0"), is_hub_id("./runs/lite0/model"), is_hub_id("a/b/c"), is_hub_id("resnet50")
    (True, False, False, True)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

__all__ = ["is_hub_id", "EXAMPLES_DIR"]

#: The folder of example films beside a Space's ``app.py`` (written by ``cxr.hub space --examples``), which the app
#: offers when no ``--examples`` folder is named.
EXAMPLES_DIR = "examples"


def is_hub_id(ref: Union[str, os.PathLike]) -> bool:
    """Whether ``ref`` names a Hub repository rather than a local path (see the module docstring)."""
    text = str(ref)
    if not text or Path(text).exists() or text.startswith((".", "/", "~")) or "\\" in text:
        return False
    parts = text.split("/")
    return len(parts) in (1, 2) and all(parts)
