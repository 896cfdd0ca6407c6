"""What every command shares: the process set-up and the one-line errors (:func:`run_cli`), the program name as
typed, the help format, and the parser made from an options dataclass's fields (:func:`add_option_flags`,
:func:`parse_options`; the fields are declared with :func:`cxr.options.option`)."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Type, TypeVar

from cxr.allocator import release_periodically
from cxr.errors import CXRError
from cxr.options import minimum_problems

__all__ = [
    "EPILOG",
    "run_cli",
    "program_name",
    "HelpFormatter",
    "make_parser",
    "add_option_flags",
    "parse_options",
    "check_options",
    "same_flag_as",
]

_logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Shown under every command's --help.
EPILOG = (
    "Research use only — not for diagnosis. Environment: CXR_KEEP_FREED_MEMORY=0 keeps the C library's "
    "allocator defaults (cxr/allocator.py; by default freed memory is kept for reuse, which is faster)."
)


def run_cli(fn: Callable[[], None]) -> int:
    """Set up the process's logging and run ``fn``, turning a :class:`CXRError`, or a full disk, into a one-line
    message and exit status 2. While ``fn`` runs, the heap's free memory is handed back every
    :data:`cxr.allocator.RELEASE_EVERY_S` seconds (:func:`cxr.allocator.release_periodically`); the allocator
    settings themselves came with importing the package."""
    logging.basicConfig(level=os.environ.get("CXR_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "httpx", "httpx2", "huggingface_hub", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    releasing = release_periodically()
    try:
        fn()
    except CXRError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        full = _disk_full(e)
        if full is None:
            raise
        print(
            f"error: {full}: free space on that disk, or write to another folder (--output-dir); a training "
            "run resumes from its last checkpoint with --resume auto",
            file=sys.stderr,
        )
        return 2
    finally:
        if releasing is not None:
            releasing.set()
    return 0


#: Errors of a disk that cannot take more: a sentence, not a traceback.
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _disk_full(error: BaseException) -> Optional[str]:
    """What to say when ``error`` (or an error it was raised from) is a full disk, else ``None``. Libraries
    that write files (safetensors, torch.save, Arrow) wrap the C library's error in their own."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            return os.strerror(error.errno) + (f" writing {error.filename}" if error.filename else "")
        text = str(error)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            if "shm" in text or "shared memory" in text.lower():
                return None  # shared memory of loader workers, not the output disk: the traceback says more
            return f"no space left on the device ({type(error).__name__}: {error})"
        error = error.__cause__ or error.__context__
    return None


def program_name(default: str) -> str:
    """The command as the user typed it: an installed console command (``cxr-train``, ...) by its own
    name, else ``default`` (``accelerate launch train_accelerate.py``, ``python -m cxr.eval``, ...)."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name.startswith("cxr-") else default


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` to a flag's help unless the help already says its default, or it has none (``None``,
    a switch that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False) or action.default == []:
            return text
        return super()._get_help_string(action)


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=program_name(prog),
        description=description,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )


def add_option_flags(
    parser: argparse.ArgumentParser,
    options_cls: type,
    names: Optional[Sequence[str]] = None,
    sections: Optional[Mapping[str, str]] = None,
) -> None:
    """Add a flag for each field of the dataclass ``options_cls`` declared with :func:`cxr.options.option`:
    name, default, help, choices and section all come from the field.

    Args:
        parser: the parser to add to.
        options_cls: a dataclass such as :class:`~cxr.training.config.TrainConfig`.
        names: only these fields (default: every declared one).
        sections: ``{group: title}``: list each field under its group's section, else in the parser's own.

    Example:
        >>> from cxr.training.config import TrainConfig
        >>> p = argparse.ArgumentParser()
        >>> add_option_flags(p, TrainConfig, names=("epochs", "final_fit"))
        >>> p.parse_args(["--epochs", "3", "--no-final-fit"])
        Namespace(epochs=3, final_fit=False)
    """
    groups = {key: parser.add_argument_group(title) for key, title in (sections or {}).items()}
    for f in dataclasses.fields(options_cls):
        if "help" in f.metadata and (names is None or f.name in names):
            _add_field(groups.get(f.metadata["group"], parser), f)


def _add_field(parser, f: dataclasses.Field) -> None:
    meta = dict(f.metadata)
    help_text, choices, env = meta.pop("help"), meta.pop("choices"), meta.pop("env", None)
    positional = meta.pop("positional", False)
    meta.pop("group")
    meta.pop("minimum", None)
    kwargs: Dict[str, Any] = {"help": help_text() if callable(help_text) else help_text, **meta}
    if choices is not None:
        kwargs["choices"] = tuple(choices() if callable(choices) else choices)
    has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    required = not has_default
    if required:
        default = None
    if env is not None:  # the environment gives the default; the flag is required only without it
        default = os.environ.get(env)
        required = default is None
        kwargs["help"] += f" Default: ${env}."
    kind = str(f.type)
    if "action" in kwargs or "type" in kwargs:
        pass
    elif "bool" in kind:
        kwargs["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
    elif "int" in kind:
        kwargs["type"] = int
    elif "float" in kind:
        kwargs["type"] = float
    if positional:
        parser.add_argument(f.name, **kwargs)
        return
    if required:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def parse_options(parser: argparse.ArgumentParser, options_cls: Type[T], argv: Optional[List[str]]) -> T:
    """Parse ``argv`` into ``options_cls`` (paths as strings); the values' own checks are :func:`check_options`'s."""
    args = vars(parser.parse_args(argv))
    names = {f.name for f in dataclasses.fields(options_cls)}
    return options_cls(**{k: (str(v) if isinstance(v, Path) else v) for k, v in args.items() if k in names})


def check_options(options: Any) -> None:
    """Raise the first value below its field's declared minimum, as one sentence (:func:`cxr.options.minimum_problems`)."""
    problems = minimum_problems(options)
    if problems:
        raise CXRError(problems[0])


def same_flag_as(options_cls: type, name: str, **changes: Any) -> Any:
    """A field declared as ``options_cls``'s field ``name`` (help, choices, default), for another program's
    options: a flag two programs share is written once. ``changes`` override its metadata (e.g. ``group``)."""
    f = {f.name: f for f in dataclasses.fields(options_cls)}[name]
    return dataclasses.field(
        default=f.default, default_factory=f.default_factory, metadata={**f.metadata, "group": None, **changes}
    )
