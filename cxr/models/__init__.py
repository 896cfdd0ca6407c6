"""Models: architectures, weights, saved checkpoints and what a loaded model does.

- :mod:`cxr.models.registry` — the study's architectures and their fine-tuning policies, with AlexNet
  (:mod:`~cxr.models.alexnet`) and the pixel baseline (:mod:`~cxr.models.logreg`) registered in timm;
  :mod:`cxr.models.pretrained` — ImageNet weights offline and online;
- :mod:`cxr.models.checkpoint` — the model folder (timm's Hub layout + preprocessing), saved and loaded;
- :mod:`cxr.models.classifier` — :class:`~cxr.models.classifier.CXRClassifier`, a loaded model that predicts;
- :mod:`cxr.models.ood` — the out-of-distribution guard; :mod:`cxr.models.cam` — Grad-CAM heat maps;
- :mod:`cxr.models.batch_predict` — many films through one or more models (``python -m cxr.predict``).

Imports data, metrics and the foundations.
"""

from cxr.models.registry import (
    MODEL_SPECS,
    TRAIN_LAYER_POLICIES,
    ModelSpec,
    apply_train_layers,
    create_model,
    freeze_batchnorm_statistics,
    model_spec,
    resolve_model_name,
)

__all__ = [
    "MODEL_SPECS",
    "TRAIN_LAYER_POLICIES",
    "ModelSpec",
    "apply_train_layers",
    "create_model",
    "freeze_batchnorm_statistics",
    "model_spec",
    "resolve_model_name",
]
