"""The app: saved models side by side, in a browser.

- :mod:`cxr.app.board` — the Gradio-free logic: loading models, one upload's predictions, probabilities and
  Grad-CAM for every model; :mod:`cxr.app.examples` — example films no served model trained on;
  :mod:`cxr.app.kept` — the decoded images a page keeps;
- :mod:`cxr.app.handlers` — what the page's events and API endpoints compute (no Gradio either);
- :mod:`cxr.app.page` — the Gradio page built on them; :mod:`cxr.app.server` — serving it, with its limits;
  :mod:`cxr.app.upload_guard` — what anyone may store through the upload route;
- :mod:`cxr.app.gradio_internals` — every workaround that relies on Gradio's internals, with the behaviour each
  relies on, and the Gradio versions they were tested with;
- :mod:`cxr.app.quickstart` — ``app.py --quickstart``: train two small models, then serve them.

The board, examples, handlers and page import data, models and reporting, never training, the CV or the Hub
push; only the quick start trains.
"""
