"""Class sets and the screening question asked of them.

A model predicts the classes its training data held (:class:`Classes`, saved with the checkpoint as ``label_names``
and ``cxr.screening``). The screening question is asked of two of its settings: the *negative* class (films called
it are not looked at again: ``Normal``) and the *critical* classes, whose films must not be called negative (the
study's COVID and Viral Pneumonia). :data:`DATABASE` is the COVID-19 Radiography Database's four classes with the
study's question; :data:`CLASS_NAMES` its names, the public ``cxr.CLASS_NAMES``.

Example:
    >>> c = Classes.resolve(["Normal", "Tuberculosis"])
    >>> c.negative, c.critical, c.negative_index, c.critical_indices
    ('Normal', ('Tuberculosis',), 0, [1])
    >>> Classes.resolve(["COVID", "Lung_Opacity", "Normal"]).critical
    ('COVID',)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from cxr.errors import CXRError

__all__ = [
    "CLASS_NAMES",
    "NORMAL",
    "CRITICAL_CLASSES",
    "DISCLAIMER",
    "NORMALIZATIONS",
    "AUTO",
    "NO_NEGATIVE",
    "Classes",
    "DATABASE",
]

#: The COVID-19 Radiography Database's class names, in the order of its models' outputs (sorted, as every folder
#: dataset's classes are).
CLASS_NAMES: Tuple[str, ...] = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")

#: The negative class by default, when the data has it.
NORMAL: str = "Normal"
#: Shown wherever a prediction is: the models are research tools, not diagnostic devices.
DISCLAIMER = "Research use only — not for diagnosis."

#: The critical classes by default: those of these the data has (the study's primary aim).
CRITICAL_CLASSES: Tuple[str, ...] = ("COVID", "Viral Pneumonia")

#: ``--negative-class``/``--critical-classes`` value meaning "the default for these classes".
AUTO = "auto"
#: ``--negative-class`` value meaning "no screening decision: argmax".
NO_NEGATIVE = "none"

#: Per-channel (mean, std) sets compared in the study (``--norm``); ``model`` means the backbone's own.
NORMALIZATIONS: Dict[str, Tuple[Tuple[float, float, float], Tuple[float, float, float]]] = {
    "radiography": ((0.4363, 0.4328, 0.3291), (0.2129, 0.2075, 0.2038)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclasses.dataclass(frozen=True)
class Classes:
    """A model's classes, in output order, and the screening question asked of them.

    Attributes:
        names: class names in the order of the model's outputs.
        negative: the class a film is called only when its probability reaches the operating point's threshold;
            ``None``: no screening decision (argmax everywhere).
        critical: classes whose films must not be called ``negative`` (empty without a negative class).
    """

    names: Tuple[str, ...]
    negative: Optional[str] = None
    critical: Tuple[str, ...] = ()

    @classmethod
    def resolve(
        cls,
        names: Sequence[str],
        negative: Optional[str] = AUTO,
        critical: Union[str, Sequence[str], None] = AUTO,
    ) -> "Classes":
        """The classes ``names`` with ``--negative-class`` and ``--critical-classes`` checked and defaulted.

        Defaults: the negative class is ``Normal`` when ``names`` has it, else none; the critical classes are those
        of COVID and Viral Pneumonia that ``names`` has, or, with neither, every class but the negative.

        Raises:
            CXRError: fewer than two classes, a name given twice, a negative or critical class not among
                ``names``, a critical class equal to the negative, critical classes without a negative class.
        """
        names = tuple(str(n) for n in names)
        if len(names) < 2:
            raise CXRError(
                f"a classifier needs at least two classes; the data has {len(names)}"
                + (f" ({names[0]!r})" if names else "")
            )
        if len(set(names)) != len(names):
            raise CXRError(f"class names must be distinct; got {list(names)}")
        if negative == AUTO:
            negative = NORMAL if NORMAL in names else None
        elif negative in (None, NO_NEGATIVE, ""):
            negative = None
        elif negative not in names:
            raise CXRError(
                f"--negative-class {negative!r} is not a class of the data; its classes are {_listed(names)}"
            )
        if isinstance(critical, str):
            critical = None if critical == AUTO else [c.strip() for c in critical.split(",") if c.strip()]
        if negative is None:
            if critical:
                raise CXRError(
                    f"--critical-classes {','.join(critical)} needs a negative class to be called; "
                    "give --negative-class NAME"
                )
            return cls(names)
        if critical is None:
            critical = [c for c in CRITICAL_CLASSES if c in names] or [c for c in names if c != negative]
        critical = list(dict.fromkeys(critical))
        if not critical:
            raise CXRError("--critical-classes is empty; name at least one class, or leave it out for the default")
        unknown = [c for c in critical if c not in names]
        if unknown:
            raise CXRError(
                f"--critical-classes {','.join(unknown)}: not a class of the data; its classes are {_listed(names)}"
            )
        if negative in critical:
            raise CXRError(f"--critical-classes includes the negative class {negative!r}; a class cannot be both")
        return cls(names, negative, tuple(c for c in names if c in critical))

    @property
    def negative_index(self) -> Optional[int]:
        """Output index of the negative class (``None`` without one)."""
        return None if self.negative is None else self.names.index(self.negative)

    @property
    def critical_indices(self) -> List[int]:
        """Output indices of the critical classes."""
        return [self.names.index(c) for c in self.critical]

    @property
    def critical_label(self) -> str:
        """The critical classes in words: ``"COVID + Viral Pneumonia"``."""
        return " + ".join(self.critical)

    def index(self, name: str) -> int:
        """Output index of class ``name``."""
        return self.names.index(name)

    def __len__(self) -> int:
        return len(self.names)

    def to_config(self) -> Dict[str, Any]:
        """The ``cxr.screening`` entry of a model's ``config.json``."""
        return {"negative_class": self.negative, "critical_classes": list(self.critical)}

    def to_dict(self) -> Dict[str, Any]:
        """The classes as run records keep them (``metrics.json``'s ``classes``)."""
        return {"names": list(self.names), **self.to_config()}

    @classmethod
    def from_dict(cls, entry: Dict[str, Any]) -> "Classes":
        """Inverse of :meth:`to_dict`."""
        return cls.resolve(
            entry["names"], entry.get("negative_class") or NO_NEGATIVE, list(entry.get("critical_classes") or [])
        )

    @classmethod
    def from_model_config(cls, config: Dict[str, Any]) -> "Classes":
        """A model's classes from its ``config.json``: ``label_names`` and ``cxr.screening``. A format-1 model saved
        before ``cxr.screening`` was written predicts the database's classes and asks the study's question."""
        names = tuple(config.get("label_names") or ())
        screening = (config.get("cxr") or {}).get("screening")
        if screening is None:
            return cls.resolve(names)
        return cls.resolve(
            names, screening.get("negative_class") or NO_NEGATIVE, list(screening.get("critical_classes") or [])
        )


def _listed(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


#: The database's classes and the study's question: COVID and Viral Pneumonia must not be called Normal.
DATABASE = Classes(CLASS_NAMES, NORMAL, CRITICAL_CLASSES)
