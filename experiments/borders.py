"""Do the films have borders a crop would remove? The candidate "cropping borders" for films from elsewhere, measured before it is
built: for each folder, the share of each film's rows and columns, from each edge inwards, that are uniform
(intensity standard deviation under ``--flat`` grey levels) — the black or white frames a scanner or an export
leaves — and how many films have more than ``--min-share`` of their height or width in such a frame.

    python experiments/borders.py --folder ../shared/data/cxr-external-dev/Normal --folder ../shared/data/cxr-sample/Normal

Burned-in markers (letters, arrows) are not uniform rows and are not measured here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/common.py, shared with bench/

from common import REPO, machine, table  # noqa: E402

sys.path.insert(0, str(REPO))

from cxr.data.decode import load_grayscale  # noqa: E402
from cxr.data.inputs import find_films  # noqa: E402


def _edge_run(flat: np.ndarray) -> int:
    """How many leading entries of a boolean vector are true."""
    return int(np.argmin(flat)) if not flat.all() else len(flat)


def border_shares(path: Path, flat: float) -> List[float]:
    """The share of the film's height and of its width in uniform rows / columns at its edges."""
    a = np.asarray(load_grayscale(path), dtype=np.float32)
    rows, cols = a.std(axis=1) < flat, a.std(axis=0) < flat
    return [
        (_edge_run(rows) + _edge_run(rows[::-1])) / a.shape[0],
        (_edge_run(cols) + _edge_run(cols[::-1])) / a.shape[1],
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", action="append", required=True, help="A folder of films (repeatable).")
    p.add_argument("--flat", type=float, default=4.0, help="A row or column is uniform below this standard deviation.")
    p.add_argument("--min-share", type=float, default=0.05, help="A film counts as framed above this share.")
    args = p.parse_args()
    rows = []
    for folder in args.folder:
        films = find_films([folder]).files
        shares = np.array([border_shares(f, args.flat) for f in films])
        framed = int((shares.max(axis=1) > args.min_share).sum())
        rows.append(
            [
                folder,
                len(films),
                f"{100 * shares[:, 0].mean():.2f}%",
                f"{100 * shares[:, 1].mean():.2f}%",
                f"{100 * shares.max():.1f}%",
                f"{framed}/{len(films)}",
            ]
        )
    print(f"\n{machine()}; uniform: std < {args.flat} grey levels; framed: > {100 * args.min_share:.0f}%\n")
    header = ["folder", "films", "mean height in frames", "mean width in frames", "largest share", "framed films"]
    print(table(header, rows))


if __name__ == "__main__":
    main()
