"""How another dataset's class names become ours, and which of our classes a dataset must hold.

Training needs all four classes (:data:`cxr.labels.CLASS_NAMES`); external validation (``python -m cxr.eval``)
scores a folder holding any of them — an outside hospital's Normal and COVID films — and maps its names onto ours
with ``--label-map NAME=CLASS`` (e.g. ``Pneumonia=Viral Pneumonia``, ``No finding=Normal``). A name that is
neither one of ours nor mapped is refused, never guessed.

Example:
    >>> lab = Labelling.parse(["No finding=Normal"], partial=True)
    >>> lab.class_of("No finding"), lab.class_of("COVID"), lab.class_of("Cardiomegaly")
    ('Normal', 'COVID', None)
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, Optional, Sequence

from cxr.errors import CXRError
from cxr.labels import CLASS_NAMES

__all__ = ["Labelling", "ALL_CLASSES"]


@dataclasses.dataclass(frozen=True)
class Labelling:
    """Which class names a dataset may use and how they map onto ours.

    Attributes:
        partial: a subset of the four classes is enough (evaluation); else all four are required (training).
        label_map: the dataset's name -> our class name.
    """

    partial: bool = False
    label_map: Dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, items: Optional[Iterable[str]], partial: bool = True) -> "Labelling":
        """``--label-map`` values (``NAME=CLASS``, repeatable) checked: each CLASS one of ours, each NAME once.

        Raises:
            CXRError: a value without ``=``, an empty name, a class that is not ours, a name given twice.
        """
        mapping: Dict[str, str] = {}
        for item in items or ():
            name, sep, ours = item.partition("=")
            name, ours = name.strip(), ours.strip()
            if not sep or not name:
                raise CXRError(f"--label-map {item!r}: write NAME=CLASS, e.g. 'Pneumonia=Viral Pneumonia'")
            if ours not in CLASS_NAMES:
                raise CXRError(
                    f"--label-map {item!r}: {ours!r} is not a class; the classes are {', '.join(CLASS_NAMES)}"
                )
            if name in mapping and mapping[name] != ours:
                raise CXRError(f"--label-map maps {name!r} twice ({mapping[name]!r} and {ours!r})")
            mapping[name] = ours
        return cls(partial, mapping)

    def class_of(self, name: str) -> Optional[str]:
        """Our class for the dataset's ``name``, or ``None`` when it is neither ours nor mapped."""
        if name in self.label_map:
            return self.label_map[name]
        return name if name in CLASS_NAMES else None

    def check(self, names: Sequence[str], what: str, noun: str = "class name") -> List[str]:
        """Our class for each of the dataset's class ``names`` (``noun``: what they are, for the message).

        Raises:
            CXRError: a name that cannot be mapped, or (not partial) one of our classes missing.
        """
        unknown = [n for n in names if self.class_of(n) is None]
        ours = [self.class_of(n) for n in names]
        problems = []
        if unknown:
            hint = " (map it with --label-map NAME=CLASS)" if self.partial else ""
            problems.append(f"unknown {noun}(s): {', '.join(repr(u) for u in unknown)}{hint}")
        missing = [c for c in CLASS_NAMES if c not in ours]
        if missing and not self.partial:
            problems.append(f"missing {noun}(s): {', '.join(repr(m) for m in missing)}")
        if not self.partial and not missing and len(set(ours)) < len(ours):
            problems.append("two names map onto one class")
        if problems:
            expected = (
                f"any of {', '.join(CLASS_NAMES)}"
                if self.partial
                else f"exactly one per class: {', '.join(CLASS_NAMES)}"
            )
            raise CXRError(f"{what}: {'; '.join(problems)}. Expected {expected}.")
        return [c for c in ours if c is not None]


#: Training's labelling: all four classes, under our own names.
ALL_CLASSES = Labelling()
