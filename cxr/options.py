"""Options declared beside their fields: each field of a program's options dataclass (:class:`TrainConfig`,
and every command's in :mod:`cxr.commands`) carries its flag's help text, ``--help`` section, choices, default
environment variable and lowest allowed value, so a flag's help, default and check are written once;
:func:`cxr.commands.common.add_option_flags` makes the parser from them and :func:`minimum_problems` checks them."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, List, Optional, Sequence, Union

__all__ = ["option", "minimum_problems"]

_NO_DEFAULT: Any = dataclasses.MISSING


def option(
    default: Any = _NO_DEFAULT,
    *,
    help: Union[str, Callable[[], str]],
    group: Optional[str] = None,
    choices: Union[Sequence[Any], Callable[[], Sequence[Any]], None] = None,
    minimum: Optional[float] = None,
    **argparse_kwargs: Any,
) -> Any:
    """A dataclass field that is also a command-line flag.

    Args:
        default: the field's default (none: a required flag; a list: a fresh copy per instance).
        help: the flag's help text (a callable when it is computed, e.g. from the presets).
        group: the ``--help`` section it is listed in (``None``: the parser's own).
        choices: the allowed values (a callable when computed).
        minimum: the lowest value allowed (checked by :func:`minimum_problems`; ``None``: any).
        argparse_kwargs: anything else ``add_argument`` takes (``metavar``, ``nargs``, ``action``, ``type``), and
            ``env``: an environment variable that gives the default; ``positional=True``: an argument without
            ``--``.

    Returns:
        A ``dataclasses.field``.
    """
    metadata = {"help": help, "group": group, "choices": choices, "minimum": minimum, **argparse_kwargs}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def minimum_problems(options: Any) -> List[str]:
    """A sentence for each field of the dataclass instance ``options`` below its declared ``minimum``.

    Example:
        >>> @dataclasses.dataclass
        ... class Opts:
        ...     batch_size: int = option(8, help="Images per pass.", minimum=1)
        ...     num_workers: int = option(0, help="Workers.", minimum=0)
        >>> minimum_problems(Opts(batch_size=0, num_workers=-1))
        ['--batch-size must be at least 1, got 0', '--num-workers must be >= 0, got -1']
    """
    problems = []
    for f in dataclasses.fields(options):
        low, value = f.metadata.get("minimum"), getattr(options, f.name)
        if low is None or value is None or value >= low:
            continue
        flag = "--" + f.name.replace("_", "-")
        problems.append(
            f"{flag} must be >= 0, got {value}" if low == 0 else f"{flag} must be at least {low}, got {value}"
        )
    return problems
