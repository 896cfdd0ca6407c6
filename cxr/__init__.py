"""cxr: chest X-ray classifiers (COVID, Lung_Opacity, Normal, Viral Pneumonia) — research use only,
not for diagnosis.

Importing the package registers its extra architectures (``alexnet``, ``logreg``) in timm, so
``timm.create_model`` and transformers' timm wrapper can load every checkpoint it writes.
"""
from . import models  # noqa: F401  (timm registrations)
from .classifier import CXRClassifier
from .labels import CLASS_NAMES, CRITICAL_CLASSES, NORMAL

__version__ = "0.1.0"

__all__ = ["CXRClassifier", "CLASS_NAMES", "CRITICAL_CLASSES", "NORMAL", "__version__"]
