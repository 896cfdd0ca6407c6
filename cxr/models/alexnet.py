"""AlexNet registered in timm's model registry (timm ships none).

The module mirrors torchvision's ``alexnet`` layer for layer (``features``, ``avgpool``,
``classifier``), so torchvision's ImageNet weights load unchanged and the study's indices
(``features[10]`` onwards train, Grad-CAM on ``features[12]``) mean the same layers. Once
:mod:`cxr` is imported, ``timm.create_model("alexnet")`` works like any timm model: it saves with
``save_for_hf``, reloads with ``local-dir:``/``hf-hub:`` and reports its classifier and first conv.

Example:
    >>> import timm, cxr.models  # registers the model
    >>> m = timm.create_model("alexnet", num_classes=4)
    >>> m.get_classifier()
    Linear(in_features=4096, out_features=4, bias=True)
"""

from __future__ import annotations

from typing import Optional

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["AlexNet", "alexnet"]


class AlexNet(nn.Module):
    """AlexNet ("One weird trick" variant, as in torchvision) with timm's classifier interface.

    Args:
        num_classes: outputs of the last linear layer (0 for a feature extractor).
        in_chans: input channels.
        drop_rate: dropout before each fully connected layer.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5, **kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = 4096
        self.drop_rate = drop_rate
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=drop_rate),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=drop_rate),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes) if num_classes > 0 else nn.Identity(),
        )
        self.feature_info = [dict(num_chs=256, reduction=32, module="features.12")]

    def get_classifier(self) -> nn.Module:
        return self.classifier[6]

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.classifier[6] = nn.Linear(4096, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        x = self.classifier[:6](x)
        return x if pre_logits else self.classifier[6](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs(
    {
        "alexnet.tv_in1k": {
            "url": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            "num_classes": 1000,
            "input_size": (3, 224, 224),
            "pool_size": (6, 6),
            "crop_pct": 0.875,
            "interpolation": "bilinear",
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
            "first_conv": "features.0",
            "classifier": "classifier.6",
            "license": "bsd-3-clause",
            "origin_url": "https://pytorch.org/vision/stable/models/alexnet.html",
        },
    }
)


@register_model
def alexnet(pretrained: bool = False, **kwargs) -> AlexNet:
    """AlexNet; ``pretrained=True`` loads torchvision's ImageNet-1k weights."""
    return build_model_with_cfg(AlexNet, "alexnet", pretrained, **kwargs)
