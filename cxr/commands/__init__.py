"""The command lines, one module per program, each with ``build_parser()`` and ``main(argv)``:

- :mod:`cxr.commands.train` — ``train_accelerate.py`` (its flags generated from :class:`TrainConfig`'s fields);
- :mod:`cxr.commands.eval` — ``python -m cxr.eval``; :mod:`cxr.commands.predict` — ``python -m cxr.predict``;
- :mod:`cxr.commands.app` — ``app.py``; :mod:`cxr.commands.cv` — ``python -m cxr.cv``;
- :mod:`cxr.commands.hub` — ``python -m cxr.hub``; :mod:`cxr.commands.study` — ``python -m cxr.study``;
- :mod:`cxr.commands.common` — what they share: :func:`~cxr.commands.common.run_cli` (one ``error:`` line and exit
  status 2 for a user's mistake, before any output file is written) and the parser made from options fields.

Each program's options are a dataclass whose fields declare their flags (:func:`cxr.options.option`): help text,
default and lowest value in one place. The ``main`` functions import the layers they run inside ``run``, after the
arguments are parsed, so ``--help`` and a bad flag answer without loading torch.
"""
