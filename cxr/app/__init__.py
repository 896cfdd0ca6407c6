"""The app: saved models side by side, in a browser.

- :mod:`cxr.app.board` — the Gradio-free logic: loading models, one upload's predictions, probabilities and
  Grad-CAM for every model;
- :mod:`cxr.app.page` — the Gradio page built on the board;
- :mod:`cxr.app.quickstart` — ``app.py --quickstart``: train a small model, then serve it.

The board and the page import data, models and reporting, never training, the CV or the Hub push; only the
quick start trains.
"""
