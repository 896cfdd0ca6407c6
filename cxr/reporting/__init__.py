"""Reporting: what people read, rendered from a run's files.

- :mod:`cxr.reporting.run_report` — the run report (``report.md``) from :mod:`~cxr.reporting.run_facts` (the
  facts as lines) and :mod:`~cxr.reporting.tables` (every report's tables); :mod:`~cxr.reporting.plots` — the
  figures; :mod:`~cxr.reporting.cv_report` — the cross-validation report (``cv.md``);
- :mod:`cxr.reporting.model_card` — the Hub model card, from the template in ``model_cards/``;
- :mod:`cxr.reporting.study_reference` — the seed study's published figures, to compare against.

Imports the foundations and :mod:`cxr.metrics`; never torch or timm (import contract), training or the Hub client
for anything but the card's metadata.
"""
