"""Training and evaluation of classifiers.

A training run (:func:`cxr.training.loop.train`) is a row of stages, each in the module that owns it:

- :mod:`~cxr.training.config` — what a run is told: :class:`~cxr.training.config.TrainConfig` (every setting, each
  a flag) and the recipes ``--preset`` names, resolved, reading no file, into a frozen ``Recipe``;
- :mod:`~cxr.training.loop` — the run itself: ``train()`` (the checks that need the disk or the Hub, once, before
  anything is written) and ``fit()``, the stages in order: the accelerator → :mod:`~cxr.training.run_data` (pixel
  cache and split) → :mod:`~cxr.training.build` (model, preprocessing, loaders, optimiser and schedule) →
  :mod:`~cxr.training.epochs` (one epoch and its validation) → :mod:`~cxr.training.finish` (the kept model scored;
  temperature, operating point, guard; their held-out predictions in :mod:`~cxr.training.held_out`) →
  :mod:`~cxr.training.run_files` (what the run folder receives);
- :mod:`~cxr.training.resume` — saved recipes, recipe differences, checkpoints to resume from;
  :mod:`~cxr.training.final_fit` — ``--final-fit``'s two runs.

Beside training: :mod:`~cxr.training.evaluation` (batched prediction under Accelerate, the files an evaluation
writes, the error gallery of misclassified films, and ``python -m cxr.eval``: a saved model scored on a folder or
dataset) and :mod:`~cxr.training.cv` (``python -m cxr.cv``, k-fold cross-validation of a recipe).

Imports data, metrics, models, reporting and the Hub push; never the app, the study or the command line.
"""
