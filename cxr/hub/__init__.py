"""The Hugging Face Hub: publishing model folders with their cards, and deploying the Gradio Space.

- :mod:`cxr.hub.publish` — push a run's model folder (timm's Hub layout), resolve Hub ids;
- :mod:`cxr.hub.space` — build and deploy the Space folder (``app.py`` + this package).

``python -m cxr.hub`` is the command (:func:`cxr.cli.hub_main`). Imports models, reporting and the
foundations; never training, the app page or the command line.
"""
