"""How a dataset's class names become a model's classes.

Training takes its classes from the data (:attr:`Labelling.classes` ``None``): every class folder, or every name of
a ``ClassLabel`` column, is a class, under its own name or the one ``--label-map NAME=CLASS`` gives it (several
names mapped onto one class merge). Evaluation and recalibration score data against a model's classes
(``classes`` given, ``partial``): a folder holding any of them — an outside hospital's Normal and COVID films — with
its names mapped onto the model's by ``--label-map`` (e.g. ``Pneumonia=Viral Pneumonia``, ``No finding=Normal``).
A name that is neither the model's nor mapped is refused, never guessed.

Example:
    >>> lab = Labelling.parse(["No finding=Normal"], classes=("COVID", "Normal"), partial=True)
    >>> lab.class_of("No finding"), lab.class_of("COVID"), lab.class_of("Cardiomegaly")
    ('Normal', 'COVID', None)
    >>> Labelling.parse(["TB=Tuberculosis"]).classes_for(["Normal", "TB"])
    ('Normal', 'Tuberculosis')
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from cxr.errors import CXRError

__all__ = ["Labelling", "FROM_DATA"]


@dataclasses.dataclass(frozen=True)
class Labelling:
    """Which class names a dataset may use and how they map onto the classes.

    Attributes:
        classes: the classes names must map onto (a model's, in output order); ``None``: the data's own (training).
        partial: a subset of ``classes`` is enough (evaluation, recalibration).
        label_map: the dataset's name -> class name.
    """

    classes: Optional[Tuple[str, ...]] = None
    partial: bool = False
    label_map: Dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(
        cls, items: Optional[Iterable[str]], classes: Optional[Sequence[str]] = None, partial: bool = False
    ) -> "Labelling":
        """``--label-map`` values (``NAME=CLASS``, repeatable) checked: each CLASS one of ``classes`` (when they
        are known), each NAME once.

        Raises:
            CXRError: a value without ``=``, an empty name or class, a class that is not the model's, a name given
                twice.
        """
        known = None if classes is None else tuple(classes)
        mapping: Dict[str, str] = {}
        for item in items or ():
            name, sep, ours = item.partition("=")
            name, ours = name.strip(), ours.strip()
            if not sep or not name or not ours:
                raise CXRError(f"--label-map {item!r}: write NAME=CLASS, e.g. 'Pneumonia=Viral Pneumonia'")
            if known is not None and ours not in known:
                raise CXRError(
                    f"--label-map {item!r}: {ours!r} is not a class of the model; its classes are {', '.join(known)}"
                )
            if name in mapping and mapping[name] != ours:
                raise CXRError(f"--label-map maps {name!r} twice ({mapping[name]!r} and {ours!r})")
            mapping[name] = ours
        return cls(known, partial, mapping)

    def class_of(self, name: str) -> Optional[str]:
        """The class of the dataset's ``name``, or ``None`` when it is neither a class nor mapped."""
        if name in self.label_map:
            return self.label_map[name]
        return name if self.classes is None or name in self.classes else None

    def check(self, names: Sequence[str], what: str, noun: str = "class name") -> List[str]:
        """The class of each of the dataset's class ``names`` (``noun``: what they are, for the message).

        Raises:
            CXRError: a name that cannot be mapped; fewer than two classes for training; (not partial) one of the
                model's classes missing.
        """
        unknown = [n for n in names if self.class_of(n) is None]
        ours = [self.class_of(n) for n in names]
        problems = []
        if unknown:
            problems.append(
                f"unknown {noun}(s): {', '.join(repr(u) for u in unknown)} (map it with --label-map NAME=CLASS)"
            )
        if self.classes is not None and not self.partial:
            missing = [c for c in self.classes if c not in ours]
            if missing:
                problems.append(f"missing {noun}(s): {', '.join(repr(m) for m in missing)}")
        if problems:
            expected = (
                f" Expected {'any' if self.partial else 'each'} of {', '.join(self.classes)}." if self.classes else ""
            )
            raise CXRError(f"{what}: {'; '.join(problems)}.{expected}")
        found = sorted({c for c in ours if c is not None})
        if self.classes is None and len(found) < 2:
            raise CXRError(
                f"{what}: a classifier needs at least two classes; found {len(found)}"
                + (f" ({found[0]!r})" if found else "")
                + " (each class is a folder of films, or a name of the dataset's ClassLabel column)"
            )
        return [c for c in ours if c is not None]

    def classes_for(self, names: Sequence[str]) -> Tuple[str, ...]:
        """The classes of data whose class names are ``names``: the model's, or the data's own (mapped), sorted."""
        if self.classes is not None:
            return self.classes
        return tuple(sorted({c for c in (self.class_of(n) for n in names) if c is not None}))


#: Training's labelling: the data's own classes, under their own names.
FROM_DATA = Labelling()
