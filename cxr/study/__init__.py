"""The study: the seed study's models trained on one split, compared and reported.

- :mod:`cxr.study.runner` — train every model of the study (``python -m cxr.study``);
- :mod:`cxr.study.analysis` — McNemar tests, bootstrap intervals and the source audit from the runs' predictions;
- :mod:`cxr.study.report` — the study report with its tables and figures.

Sits above training and the app board (its figures use the app's Grad-CAM panels); nothing imports it but
the command line.
"""
