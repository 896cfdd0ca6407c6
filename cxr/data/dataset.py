"""The torch view of cached pixels (:mod:`cxr.data.pixel_cache`) that training and evaluation load batches
from: the checkpoint's normalisation, and augmentation for training."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import datasets
import numpy as np
import pyarrow as pa
import torch

from cxr.data.preprocessing import PreprocessConfig, TrainAugmentation

__all__ = ["RadiographDataset"]


class RadiographDataset(torch.utils.data.Dataset):
    """A torch view of cached pixels: ``(input, label, index)`` per image.

    Args:
        ds: the ``dataset`` of a :class:`PixelCacheResult` (numpy format).
        indices: rows of ``ds`` this view serves (a split), or all.
        preprocess: the checkpoint's preprocessing (mean/std, channels).
        augment: a :class:`TrainAugmentation` for training, ``None`` for evaluation.
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
            pixels = self.augment(pixels)
        return {
            "pixel_values": self.preprocess.normalize(pixels),
            "labels": torch.as_tensor(label),
            "index": torch.as_tensor(i),
        }
