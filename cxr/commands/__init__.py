"""The command lines, one module per program, each with ``build_parser()`` and ``main(argv)``:

- :mod:`cxr.commands.train` — ``train_accelerate.py`` (its flags generated from :class:`TrainConfig`'s fields);
- :mod:`cxr.commands.eval` — ``python -m cxr.eval``; :mod:`cxr.commands.predict` — ``python -m cxr.predict``;
- :mod:`cxr.commands.app` — ``app.py``; :mod:`cxr.commands.cv` — ``python -m cxr.cv``;
- :mod:`cxr.commands.hub` — ``python -m cxr.hub``; :mod:`cxr.commands.study` — ``python -m cxr.study``;
- :mod:`cxr.commands.common` — what they share: :func:`~cxr.commands.common.run_cli` (one ``error:`` line and exit
  status 2 for a user's mistake, before any output file is written) and the parser made from options fields.

Each program's options are a dataclass whose fields declare their flags (:func:`cxr.options.option`): help text,
default and lowest value in one place. The options name the models and preprocessing choices, so importing a
program loads torch and timm (``python -m cxr.hub`` excepted); what only a run needs — accelerate, ``datasets``,
Gradio, the Hub push — is imported inside ``main``'s ``run``, after the arguments are parsed and checked.

Importing this package applies cxr's allocator settings (:func:`cxr.allocator.keep_freed_memory`) before anything
else, so every program has them from its start.
"""

from cxr.allocator import keep_freed_memory

# First, before any program imports numpy or torch: glibc's arena limit binds only the threads that allocate after
# it is set. A thread that allocated before (numpy's import starts OpenBLAS's) keeps an arena of its own, which the
# threads started later (the app's request handlers, torch's) then share, each arena keeping its own freed memory.
keep_freed_memory()
