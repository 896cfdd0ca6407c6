"""cxr: chest X-ray classifiers (the COVID-19 Radiography Database's COVID, Lung_Opacity, Normal, Viral Pneumonia —
``CLASS_NAMES`` — or any classes of your own films) — research use only, not for diagnosis.

Importing the package registers its extra architectures (``alexnet``, ``logreg``) in timm, so
``timm.create_model`` and transformers' timm wrapper can load every checkpoint it writes.

The layers, top to bottom; each imports only those below it (checked by ``lint-imports``, ``pyproject.toml``):

1. ``cxr.cv``, ``cxr.eval``, ``cxr.predict``, ``cxr.hub``, ``cxr.study``, ``cxr.calibrate`` — ``python -m`` entry
   points;
2. ``cxr.commands`` — every command line, one module per program (``build_parser`` and ``main``);
3. ``cxr.reproduction`` — the study rerun: runner, analysis, report;
4. ``cxr.app`` — the app: board (logic), page (Gradio), quick start;
5. ``cxr.training`` — the training run's stages, evaluation, cross-validation;
6. ``cxr.publishing`` — publishing models to the Hub and deploying the Space;
7. ``cxr.reporting`` — run report, model card, CV report, figures, the study's published figures;
8. ``cxr.models`` — architectures, weights, checkpoints, ``CXRClassifier``, Grad-CAM;
9. ``cxr.data`` (decoding, preprocessing, data sources, pixel cache, splits), ``cxr.metrics`` (metrics,
   statistics), ``cxr.run_folder`` (every file of a run, by name), ``cxr.options`` (flags declared on fields);
10. ``cxr.labels``, ``cxr.allocator``, ``cxr.locations`` — the foundations;
11. ``cxr.errors`` — the one error type, below everything.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from importlib import import_module
from typing import Any

from cxr.labels import CLASS_NAMES, CRITICAL_CLASSES, NORMAL

__version__ = "0.1.0"

__all__ = ["CXRClassifier", "CLASS_NAMES", "CRITICAL_CLASSES", "NORMAL", "__version__"]

#: Names this package gives without importing them until asked (they load torch and timm): ``import cxr.labels``
#: stays light.
_LAZY = {"CXRClassifier": "cxr.models.classifier"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cxr' has no attribute {name!r}")


class _RegisterAfterTimm(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Registers cxr's architectures (``alexnet``, ``logreg``) in timm right after timm itself is imported, so
    ``import cxr`` still makes ``timm.create_model`` (and transformers' timm wrapper) load every checkpoint cxr
    writes, whichever of the two is imported first, without ``import cxr`` loading torch."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)  # timm's own (a lookup may not import)
        if spec is not None and spec.loader is not None:
            self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        module.__spec__.loader = module.__loader__ = self._loader  # timm keeps its own loader for its resources
        self._loader.exec_module(module)
        import_module("cxr.models")


if "timm" in sys.modules:
    import_module("cxr.models")
else:
    sys.meta_path.insert(0, _RegisterAfterTimm())
