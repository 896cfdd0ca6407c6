"""Models: architectures, weights, saved checkpoints and what a loaded model does.

- :mod:`cxr.models.registry` — the study's architectures (AlexNet and logistic regression registered in timm),
  their fine-tuning policies; :mod:`cxr.models.pretrained` — ImageNet weights offline and online;
- :mod:`cxr.models.checkpoint` — the model folder (timm's Hub layout + preprocessing), saved and loaded;
- :mod:`cxr.models.classifier` — :class:`~cxr.models.classifier.CXRClassifier`, a loaded model that predicts;
- :mod:`cxr.models.cam` — Grad-CAM heat maps of a loaded model.

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
