"""Model registry: the study's architectures (AlexNet and logistic regression registered in timm),
their fine-tuning policies, and ImageNet weights offline and online."""
from .registry import (
    STUDY_MODELS,
    TRAIN_LAYER_POLICIES,
    ModelSpec,
    apply_train_layers,
    create_model,
    freeze_frozen_batchnorm,
    model_spec,
    resolve_model_name,
)

__all__ = [
    "STUDY_MODELS",
    "TRAIN_LAYER_POLICIES",
    "ModelSpec",
    "apply_train_layers",
    "create_model",
    "freeze_frozen_batchnorm",
    "model_spec",
    "resolve_model_name",
]
