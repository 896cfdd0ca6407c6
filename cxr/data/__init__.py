"""Data: from files to tensors.

- :mod:`cxr.data.decode` — the one decoder of radiographs (PNG, JPEG, DICOM) to 8-bit grey pixels;
- :mod:`cxr.data.preprocessing` — resize, normalisation and augmentation, saved with every checkpoint;
- :mod:`cxr.data.dataset` — class folders and Hugging Face datasets as one ``datasets`` table, and its pixel cache;
- :mod:`cxr.data.splits` — stratified train/validation/test splits and their files.

Imports only the foundations (:mod:`cxr.errors`, :mod:`cxr.labels`); nothing here knows of models or training.
"""
