#!/usr/bin/env python3
"""Print the commands of one of the README's copyable blocks, one per line.

The README marks each block a newcomer copies with an HTML comment on the line before its fence,
``<!-- commands: NAME -->`` (``quickstart``: set-up and the main job; ``test``: set-up and the test suite).
``.ci/run`` runs the ``test`` block exactly as printed, so CI and the README cannot part.

Usage: python .ci/readme_commands.py NAME [README]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List


def block(readme: str, name: str) -> List[str]:
    """The lines of the fenced block after ``<!-- commands: NAME -->``, without comments or blank lines."""
    lines = readme.splitlines()
    marker = f"<!-- commands: {name} -->"
    if marker not in lines:
        raise SystemExit(f"README has no '{marker}' block")
    start = lines.index(marker) + 1
    if start >= len(lines) or not lines[start].startswith("```"):
        raise SystemExit(f"README's '{marker}' is not followed by a fenced block")
    commands = []
    for line in lines[start + 1 :]:
        if line.startswith("```"):
            return commands
        line = line.split("  #")[0].strip()
        if line and not line.startswith("#"):
            commands.append(line)
    raise SystemExit(f"README's '{marker}' block is not closed")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    path = Path(sys.argv[2]) if len(sys.argv) == 3 else Path(__file__).resolve().parents[1] / "README.md"
    print("\n".join(block(path.read_text(encoding="utf-8"), sys.argv[1])))
