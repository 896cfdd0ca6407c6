"""cxr: chest X-ray classifiers (COVID, Lung_Opacity, Normal, Viral Pneumonia) — research use only,
not for diagnosis.

Importing the package registers its extra architectures (``alexnet``, ``logreg``) in timm, so
``timm.create_model`` and transformers' timm wrapper can load every checkpoint it writes.

The layers, top to bottom; each imports only those below it (checked by ``lint-imports``, ``pyproject.toml``):

1. ``cxr.cv``, ``cxr.eval``, ``cxr.predict`` — ``python -m`` entry points;
2. ``cxr.cli`` — every command line (parsers and ``main`` functions);
3. ``cxr.study`` — the study: runner, analysis, report;
4. ``cxr.app`` — the app: board (logic), page (Gradio), quick start;
5. ``cxr.training`` — training loop, evaluation, cross-validation;
6. ``cxr.hub`` — publishing models and deploying the Space;
7. ``cxr.reporting`` — run report, model card, the study's published figures;
8. ``cxr.models`` — architectures, weights, checkpoints, ``CXRClassifier``, Grad-CAM;
9. ``cxr.data`` (decoding, preprocessing, datasets, splits), ``cxr.metrics`` (metrics, statistics),
   ``cxr.run_folder`` (every file of a run, by name);
10. ``cxr.errors``, ``cxr.labels``, ``cxr.allocator``, ``cxr.locations`` — the foundations.
"""

from cxr import models  # noqa: F401  (timm registrations)
from cxr.labels import CLASS_NAMES, CRITICAL_CLASSES, NORMAL
from cxr.models.classifier import CXRClassifier

__version__ = "0.1.0"

__all__ = ["CXRClassifier", "CLASS_NAMES", "CRITICAL_CLASSES", "NORMAL", "__version__"]
