"""The study's pixel baseline done right: multinomial logistic regression on normalised pixels.

One linear layer from every input pixel to the class logits, trained with softmax
cross-entropy (the original applied a sigmoid before cross-entropy). Registered in timm as
``logreg`` so it trains, saves and reloads like every other model.

Example:
    >>> import timm, cxr.models
    >>> m = timm.create_model("logreg", img_size=32, num_classes=4)
    >>> m(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from cxr.labels import NORMALIZATIONS

__all__ = ["LogisticRegression", "logreg"]

#: ITU-R 601 luma weights (PIL's ``convert("L")``), for RGB input to a one-channel model.
_LUMA = (0.299, 0.587, 0.114)


class LogisticRegression(nn.Module):
    """Flatten, then one ``nn.Linear``: softmax regression on pixels.

    Args:
        img_size: input side, or (height, width) (fixed: the weights are per pixel).
        in_chans: input channels (1: the radiograph's grey channel).
        num_classes: outputs.
    """

    def __init__(
        self,
        img_size: Union[int, Sequence[int]] = 224,
        in_chans: int = 1,
        num_classes: int = 4,
        **kwargs,
    ):
        super().__init__()
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size = (h, w)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = in_chans * h * w
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 3 and self.in_chans == 1:
            # timm's and transformers' image processors feed RGB: take its luma (exactly the grey channel
            # for grey images, and the normalisation commutes with it: one mean/std for every channel)
            x = torch.tensordot(x, x.new_tensor(_LUMA), dims=([1], [0])).unsqueeze(1)
        return torch.flatten(x, 1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_grey_mean = sum(NORMALIZATIONS["radiography"][0]) / 3
_grey_std = sum(NORMALIZATIONS["radiography"][1]) / 3

default_cfgs = generate_default_cfgs(
    {
        "logreg": {
            "num_classes": 4,
            "input_size": (1, 224, 224),
            "fixed_input_size": True,
            "crop_pct": 1.0,
            "interpolation": "bilinear",
            "mean": (_grey_mean,),
            "std": (_grey_std,),
            "first_conv": "",
            "classifier": "head",
        },
    }
)


@register_model
def logreg(pretrained: bool = False, **kwargs) -> LogisticRegression:
    """Logistic regression on pixels (no pretrained weights exist)."""
    return build_model_with_cfg(LogisticRegression, "logreg", pretrained, **kwargs)
