"""Publishing on the Hugging Face Hub: model folders with their cards, and deploying the Gradio Space.

- :mod:`cxr.publishing.publish` — push a run's model folder (timm's Hub layout), resolve Hub ids;
- :mod:`cxr.publishing.space` — build and deploy the Space folder (``app.py`` + this package).

``python -m cxr.hub`` is the command (:func:`cxr.commands.hub.main`). Imports models, reporting and the
foundations; never training, the app page or the command line. Reading from the Hub (``--data ORG/NAME``) is
:mod:`cxr.data.hub_snapshot`'s; loading a published model is :mod:`cxr.models.checkpoint`'s.
"""
