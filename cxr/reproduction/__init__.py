"""The study rerun: the seed study's models trained on one split, compared and reported.

- :mod:`cxr.reproduction.runner` — train every model of the study (``python -m cxr.study``);
- :mod:`cxr.reproduction.analysis` — McNemar tests, bootstrap intervals and the source audit from the runs' predictions;
- :mod:`cxr.reproduction.report` — the study report with its tables and figures.

Sits above training and the app board (its figures use the app's Grad-CAM panels); nothing imports it but
the command line.
"""
