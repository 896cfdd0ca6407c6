"""Reporting: what people read, rendered from a run's files.

- :mod:`cxr.reporting.run_report` — the run report (``report.md``), its tables and recipe summary;
- :mod:`cxr.reporting.model_card` — the Hub model card, from the template in ``model_cards/``;
- :mod:`cxr.reporting.study_reference` — the seed study's published figures, to compare against.

Imports the foundations and :mod:`cxr.metrics`; never torch, training or the Hub.
"""
