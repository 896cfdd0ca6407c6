"""The four classes of the COVID-19 Radiography Database and the study's normalisations."""

from __future__ import annotations

from typing import Dict, Tuple

__all__ = [
    "CLASS_NAMES",
    "NORMAL",
    "CRITICAL_CLASSES",
    "NORMALIZATIONS",
]

#: Label names, in the order of the model's outputs. Every dataset and checkpoint uses this order.
CLASS_NAMES: Tuple[str, ...] = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")

#: The class whose false assignments the study counts ("predicted as Normal").
NORMAL: str = "Normal"
#: Shown wherever a prediction is: the models are research tools, not diagnostic devices.
DISCLAIMER = "Research use only — not for diagnosis."

#: Classes whose images must not be called Normal: the study's primary aim.
CRITICAL_CLASSES: Tuple[str, ...] = ("COVID", "Viral Pneumonia")

#: Per-channel (mean, std) sets compared in the study (``--norm``); ``model`` means the backbone's own.
NORMALIZATIONS: Dict[str, Tuple[Tuple[float, float, float], Tuple[float, float, float]]] = {
    "radiography": ((0.4363, 0.4328, 0.3291), (0.2129, 0.2075, 0.2038)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
