"""The ``--augment`` choices applied to a whole batch on the training device (``--augment-on device``).

Loader workers then only read: they hand over the cached uint8 grey pixels (``B x 1 x H x W`` bytes, a twelfth of
the float input a 3-channel model takes), and the training step flips, rotates, scales, shifts and changes the
brightness and contrast of every film with a draw of its own — the same distributions and the same pixel
arithmetic as :class:`~cxr.data.preprocessing.TrainAugmentation` (torchvision's ``RandomHorizontalFlip``,
``RandomRotation``/``RandomAffine`` with bilinear sampling and a black fill, ``ColorJitter`` in a random order),
drawn from a ``torch.Generator`` on the device instead of each worker's global RNG.

Example:
    >>> import torch
    >>> aug = DeviceAugmentation.named("radiograph")
    >>> films = torch.full((4, 1, 32, 32), 128, dtype=torch.uint8)
    >>> out = aug(films, torch.Generator().manual_seed(0))
    >>> out.shape, out.dtype
    (torch.Size([4, 1, 32, 32]), torch.uint8)
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from cxr.data.preprocessing import augmentation_settings

__all__ = ["DeviceAugmentation", "Draws"]


@dataclasses.dataclass(frozen=True)
class Draws:
    """One draw per film of a batch (each a tensor of ``B`` values): flipped or not, the rotation in degrees
    (counter-clockwise), the shift in whole pixels, the zoom, the brightness and contrast factors, and whether
    contrast is changed before brightness (``ColorJitter`` applies them in a random order)."""

    flip: torch.Tensor
    angle: torch.Tensor
    tx: torch.Tensor
    ty: torch.Tensor
    scale: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    contrast_first: torch.Tensor


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64) * (high - low) + low


class DeviceAugmentation:
    """Training augmentation on a batch of uint8 grey films on any device, each film drawn independently.

    Args:
        degrees, flip_p, translate, scale, brightness, contrast: as in
            :class:`~cxr.data.preprocessing.TrainAugmentation` (0: that step is off).
    """

    def __init__(
        self,
        degrees: float = 10.0,
        flip_p: float = 0.5,
        translate: float = 0.0,
        scale: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
    ):
        self.params = dict(
            degrees=degrees, flip_p=flip_p, translate=translate, scale=scale, brightness=brightness, contrast=contrast
        )

    @classmethod
    def named(cls, name: str) -> "DeviceAugmentation":
        """The augmentation ``--augment NAME`` selects.

        Raises:
            ValueError: a name the device path does not know.
        """
        return cls(**augmentation_settings(name))

    def draw(self, n: int, height: int, width: int, generator: torch.Generator) -> Draws:
        """``n`` independent draws for ``height x width`` films, from ``generator`` (on the films' device)."""
        p = self.params
        ones = torch.ones(n, dtype=torch.float64, device=generator.device)
        zeros = torch.zeros_like(ones)
        flip = torch.rand(n, generator=generator, device=generator.device) < p["flip_p"]
        angle = _uniform(n, -p["degrees"], p["degrees"], generator) if p["degrees"] else zeros
        if p["translate"]:  # torchvision rounds the shift to whole pixels
            tx = torch.round(_uniform(n, -p["translate"] * width, p["translate"] * width, generator))
            ty = torch.round(_uniform(n, -p["translate"] * height, p["translate"] * height, generator))
        else:
            tx = ty = zeros
        scale = _uniform(n, 1 - p["scale"], 1 + p["scale"], generator) if p["scale"] else ones
        brightness = _uniform(n, 1 - p["brightness"], 1 + p["brightness"], generator) if p["brightness"] else ones
        contrast = _uniform(n, 1 - p["contrast"], 1 + p["contrast"], generator) if p["contrast"] else ones
        contrast_first = torch.rand(n, generator=generator, device=generator.device) < 0.5
        return Draws(flip, angle, tx, ty, scale, brightness, contrast, contrast_first)

    def __call__(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``B x 1 x H x W`` uint8 films augmented, each with its own draw from ``generator``."""
        return self.apply(pixels, self.draw(pixels.shape[0], pixels.shape[-2], pixels.shape[-1], generator))

    def apply(self, pixels: torch.Tensor, d: Draws) -> torch.Tensor:
        """``pixels`` (``B x 1 x H x W`` uint8) with the draws ``d`` applied; uint8 out, rounded as torchvision."""
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[1] != 1:
            raise ValueError(f"expected B x 1 x H x W uint8 films, got {tuple(pixels.shape)} {pixels.dtype}")
        p = self.params
        out = torch.where(d.flip.view(-1, 1, 1, 1), pixels.flip(-1), pixels)
        if p["degrees"] or p["translate"] or p["scale"]:
            out = self._affine(out, d)
        if p["brightness"] or p["contrast"]:
            out = self._jitter(out, d)
        return out

    @staticmethod
    def _affine(pixels: torch.Tensor, d: Draws) -> torch.Tensor:
        """torchvision's ``affine`` per film: bilinear, black fill (its mask-weighted border), rounded to uint8."""
        b, _, h, w = pixels.shape
        rot = torch.deg2rad(d.angle)
        cos, sin = torch.cos(rot) / d.scale, torch.sin(rot) / d.scale
        # the input point each output pixel samples, in pixels about the centre: (R(-angle) / scale) (p - shift)
        a11, a12, a21, a22 = cos, sin, -sin, cos
        b1 = -(a11 * d.tx + a12 * d.ty)
        b2 = -(a21 * d.tx + a22 * d.ty)
        theta = torch.stack(  # the same map in grid_sample's normalised coordinates (align_corners=False)
            [
                torch.stack([a11, a12 * h / w, b1 * 2 / w], -1),
                torch.stack([a21 * w / h, a22, b2 * 2 / h], -1),
            ],
            1,
        ).to(torch.float32)
        grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
        planes = torch.cat([pixels.to(torch.float32), torch.ones_like(pixels, dtype=torch.float32)], 1)
        sampled = F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        image, mask = sampled[:, :1], sampled[:, 1:]
        return (image * mask).round_().clamp_(0, 255).to(torch.uint8)

    @staticmethod
    def _jitter(pixels: torch.Tensor, d: Draws) -> torch.Tensor:
        """torchvision's brightness and contrast on uint8, in each film's drawn order (each step truncates)."""

        def brightness(x: torch.Tensor) -> torch.Tensor:
            return (x.to(torch.float32) * d.brightness.view(-1, 1, 1, 1).float()).clamp_(0, 255).to(torch.uint8)

        def contrast(x: torch.Tensor) -> torch.Tensor:
            f = x.to(torch.float32)
            mean = f.mean(dim=(-3, -2, -1), keepdim=True)
            ratio = d.contrast.view(-1, 1, 1, 1).float()
            return (f * ratio + mean * (1 - ratio)).clamp_(0, 255).to(torch.uint8)

        first = d.contrast_first.view(-1, 1, 1, 1)
        contrast_then_brightness = brightness(contrast(pixels))
        brightness_then_contrast = contrast(brightness(pixels))
        return torch.where(first, contrast_then_brightness, brightness_then_contrast)

    def __repr__(self) -> str:
        return "DeviceAugmentation(" + ", ".join(f"{k}={v}" for k, v in self.params.items()) + ")"
