"""Data: from files to tensors.

- :mod:`cxr.data.decode` — the one decoder of radiographs (PNG, JPEG, DICOM) to 8-bit grey pixels, with
  :mod:`~cxr.data.dicom` (the DICOM reader), :mod:`~cxr.data.formats` (what a stream claims, before decoding) and
  :mod:`~cxr.data.image_limits` (the limits every decode is held to);
- :mod:`cxr.data.preprocessing` — resize, normalisation and augmentation, saved with every checkpoint;
  :mod:`cxr.data.device_augment` — the same augmentations batched on the training device;
- :mod:`cxr.data.data_source` — what ``--data`` names (class folders, a saved or parquet dataset, a Hub dataset) as one
  ``datasets`` table; :mod:`cxr.data.folders` reads class folders, :mod:`cxr.data.hub_snapshot` fetches a Hub commit;
- :mod:`cxr.data.pixel_cache` — every image decoded and resized once, cached; :mod:`cxr.data.dataset` — its torch
  view, and the model input made of a batch on its device;
- :mod:`cxr.data.splits` — stratified train/validation/test splits and their files;
- :mod:`cxr.data.labelling` — another dataset's class names mapped onto ours; :mod:`cxr.data.sources` — each
  film's source from a ``metadata.csv``; :mod:`cxr.data.inputs` — the films a command is pointed at.

Imports only the foundations (:mod:`cxr.errors`, :mod:`cxr.labels`); nothing here knows of models or training.
"""
