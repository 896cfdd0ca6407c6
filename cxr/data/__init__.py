"""Data: from files to tensors.

- :mod:`cxr.data.decode` — the one decoder of radiographs (PNG, JPEG, DICOM) to 8-bit grey pixels;
- :mod:`cxr.data.preprocessing` — resize, normalisation and augmentation, saved with every checkpoint;
- :mod:`cxr.data.data_source` — what ``--data`` names (class folders, a saved or parquet dataset, a Hub dataset) as one
  ``datasets`` table; :mod:`cxr.data.folders` reads class folders, :mod:`cxr.data.hub_snapshot` fetches a Hub commit;
- :mod:`cxr.data.pixel_cache` — every image decoded and resized once, cached; :mod:`cxr.data.dataset` — its torch view;
- :mod:`cxr.data.splits` — stratified train/validation/test splits and their files.

Imports only the foundations (:mod:`cxr.errors`, :mod:`cxr.labels`); nothing here knows of models or training.
"""
