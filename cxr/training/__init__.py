"""Training and evaluation of classifiers.

- :mod:`cxr.training.config` — :class:`~cxr.training.config.TrainConfig` (every setting, each a flag), the presets;
- :mod:`cxr.training.loop` — fine-tuning with Accelerate (``train_accelerate.py``), in named steps;
- :mod:`cxr.training.evaluation` — scoring a saved model on a dataset (``python -m cxr.eval``);
- :mod:`cxr.training.cv` — k-fold cross-validation of a recipe (``python -m cxr.cv``).

Imports data, metrics, models, reporting and the Hub push; never the app, the study or the command line.
"""
