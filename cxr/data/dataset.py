"""The torch view of cached pixels (:mod:`cxr.data.pixel_cache`) that training and evaluation load batches
from, and :class:`ModelInput`, which turns a loaded batch into the model's input on the device it trains or
evaluates on.

Loader workers only read (and, with ``--augment-on loader``, augment one film at a time): each item is the film's
cached uint8 grey pixels, so a batch crosses from the workers as ``B x 1 x H x W`` bytes. Channel expansion and the
checkpoint's normalisation — and, with ``--augment-on device``, the augmentation, batched — run in
:class:`ModelInput` on the training device.

Example:
    >>> import torch
    >>> from cxr.data.preprocessing import PreprocessConfig
    >>> to_input = ModelInput(PreprocessConfig.create(32, in_chans=3, norm="imagenet"))
    >>> to_input(torch.zeros(2, 1, 32, 32, dtype=torch.uint8)).shape
    torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import datasets
import numpy as np
import pyarrow as pa
import torch

from cxr.data.device_augment import DeviceAugmentation
from cxr.data.preprocessing import PreprocessConfig, TrainAugmentation

__all__ = ["RadiographDataset", "ModelInput"]


class RadiographDataset(torch.utils.data.Dataset):
    """A torch view of cached pixels: ``pixels`` (``1 x H x W`` uint8, augmented with ``augment``), ``labels``
    and ``index`` per image; :class:`ModelInput` makes the model's input of a batch of them.

    Args:
        ds: the ``dataset`` of a :class:`PixelCacheResult` (numpy format).
        indices: rows of ``ds`` this view serves (a split), or all.
        preprocess: the checkpoint's preprocessing (its :class:`ModelInput` normalises).
        augment: a :class:`TrainAugmentation` run in the loader's workers (``--augment-on loader``), or ``None``.
    """

    def __init__(
        self,
        ds: datasets.Dataset,
        preprocess: PreprocessConfig,
        indices: Optional[Sequence[int]] = None,
        augment: Optional[TrainAugmentation] = None,
    ):
        self.ds = ds
        self.indices = list(range(len(ds))) if indices is None else list(indices)
        self.preprocess = preprocess
        self.augment = augment
        self._arrow: Optional[datasets.Dataset] = None

    def __len__(self) -> int:
        return len(self.indices)

    def labels(self) -> np.ndarray:
        """Labels of the served rows, in order."""
        return np.asarray(self.ds.select(self.indices)["label"], dtype=np.int64)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        row = self.ds[self.indices[i]]
        return self._item(np.asarray(row["pixels"], dtype=np.uint8), int(row["label"]), i)  # numpy format widens uint8

    def __getitems__(self, positions: Sequence[int]) -> List[Dict[str, torch.Tensor]]:
        """The items at ``positions`` from one Arrow read (what a ``DataLoader`` fetches per batch):
        the same items as ``[self[i] for i in positions]``, a tenth of the reading time."""
        if self._arrow is None:
            self._arrow = self.ds.with_format("arrow", columns=["pixels", "label"])
        table = self._arrow[[self.indices[i] for i in positions]]
        column = table.column("pixels").combine_chunks()
        storage = column.storage if isinstance(column, pa.ExtensionArray) else column
        pixels = storage.flatten().flatten().to_numpy().reshape(len(table), *column.type.shape)
        labels = table.column("label").to_numpy()
        return [self._item(px, int(label), i) for px, label, i in zip(pixels, labels, positions)]

    def _item(self, pixels: np.ndarray, label: int, i: int) -> Dict[str, torch.Tensor]:
        if self.augment is not None:
            film = self.augment(pixels)
        else:
            film = torch.from_numpy(np.array(pixels, dtype=np.uint8)).unsqueeze(0)
        return {"pixels": film, "labels": torch.as_tensor(label), "index": torch.as_tensor(i)}

    def model_input(self, i: int) -> torch.Tensor:
        """Item ``i``'s model input, ``1 x C x H x W`` (what :class:`ModelInput` makes of it in a batch)."""
        return ModelInput(self.preprocess)(self[i]["pixels"][None])


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """A batch's cached uint8 films (``B x 1 x H x W``, on the device) as the model's float input: augmented when
    ``augment`` is given (each film its own draw from the generator), the grey channel replicated to the model's
    channels and normalised (``preprocess``), in channels-last memory format if asked.

    Args:
        preprocess: the checkpoint's preprocessing.
        augment: the batched augmentation of ``--augment-on device`` (training only), or ``None``.
        channels_last: return the input in channels-last memory format.
    """

    preprocess: PreprocessConfig
    augment: Optional[DeviceAugmentation] = None
    channels_last: bool = False

    def __call__(self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if self.augment is not None:
            if generator is None:
                raise ValueError("device augmentation draws from a generator on the device; none was given")
            pixels = self.augment(pixels, generator)
        x = self.preprocess.normalize(pixels)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
