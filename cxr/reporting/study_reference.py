"""The numbers the seed study published, for side-by-side reports.

Source: J. Yang, C.-W. Wang, E. Y. Park, "Detection of Lung Diseases through image
classification" (UW–Madison, 2021), test set of 2,116 images of the full database (seed 1,
80/10/10 split). Their per-class tables print "precision / recall / F1", but the code divided by
the true counts for "precision": the first printed value is the recall and the second the
precision. :data:`STUDY_PER_CLASS` stores them corrected.
"""

from __future__ import annotations

from typing import Dict, Optional

__all__ = ["STUDY_TABLE1", "STUDY_PER_CLASS", "STUDY_SOURCE", "study_row"]

STUDY_SOURCE = "Yang, Wang & Park (2021), full database test set (2,116 images)"

#: Table 1: accuracies in percent; "to_normal" counts of test images predicted as Normal.
STUDY_TABLE1: Dict[str, Dict[str, object]] = {
    "alexnet": {
        "label": "AlexNet",
        "train_accuracy": 97.87,
        "test_accuracy": 93.86,
        "to_normal": {"COVID": 5, "Viral Pneumonia": 3, "Lung_Opacity": 63},
    },
    "vgg19_bn": {
        "label": "VGG19_bn",
        "train_accuracy": 98.12,
        "test_accuracy": 94.33,
        "to_normal": {"COVID": 6, "Viral Pneumonia": 5, "Lung_Opacity": 51},
    },
    "resnet50": {
        "label": "ResNet50",
        "train_accuracy": 98.59,
        "test_accuracy": 95.46,
        "to_normal": {"COVID": 3, "Viral Pneumonia": 6, "Lung_Opacity": 54},
    },
    "logreg": {
        "label": "Logistic regression",
        "train_accuracy": 60.84,
        "test_accuracy": 62.24,
        "to_normal": {"COVID": 214, "Viral Pneumonia": 25, "Lung_Opacity": 197},
    },
}

#: Per-class precision / recall / F1 in percent, corrected (the printed first two values swapped).
STUDY_PER_CLASS: Dict[str, Dict[str, Dict[str, float]]] = {
    "resnet50": {
        "COVID": {"precision": 97.71, "recall": 98.28, "f1": 97.99},
        "Lung_Opacity": {"precision": 96.42, "recall": 90.71, "f1": 93.48},
        "Normal": {"precision": 93.99, "recall": 97.43, "f1": 95.68},
        "Viral Pneumonia": {"precision": 96.92, "recall": 95.45, "f1": 96.18},
    },
}


def study_row(model_name: str) -> Optional[Dict[str, object]]:
    """The study's Table 1 row for a ``--model`` name, or ``None`` if the study did not train it."""
    return STUDY_TABLE1.get(model_name)
