"""``python -m cxr.hub push RUN_DIR ORG/NAME`` and ``python -m cxr.hub space OWNER/NAME --models ...``: publish a
run with its model card, and deploy a Space that shows published models (:mod:`cxr.publishing`)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from cxr.app.examples import choose_examples, screen_with, training_split
from cxr.commands.common import EPILOG, HelpFormatter, add_option_flags, parse_options, program_name, run_cli
from cxr.errors import CXRError
from cxr.options import option
from cxr.run_folder import SPLIT_NAME

__all__ = ["PushOptions", "SpaceOptions", "build_parser", "main"]

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class PushOptions:
    """The flags of ``python -m cxr.hub push``."""

    run_dir: str = option(help="A train_accelerate.py --output-dir folder.", positional=True, type=Path)
    repo_id: str = option(help="Hub model repository ORG/NAME (created if missing).", positional=True)
    private: bool = option(False, help="Create the repository private.")
    commit_message: Optional[str] = option(None, help="Commit message (default: 'Upload <model> trained with cxr').")
    eval_dir: List[str] = option(
        [],
        help="A python -m cxr.eval --output-dir of this model on other data (e.g. films from another hospital); "
        "its figures fill the model card's 'External validation' section (numbers only: none of its files is "
        "uploaded). Repeatable.",
        action="append",
        type=Path,
        metavar="DIR",
    )


@dataclasses.dataclass(kw_only=True)
class SpaceOptions:
    """The flags of ``python -m cxr.hub space``."""

    space_id: str = option(help="Hub Space OWNER/NAME (created if missing).", positional=True)
    models: str = option(
        help="Comma-separated ids of published cxr models, in the order the app shows them.", metavar="ORG/M1,ORG/M2"
    )
    private: bool = option(False, help="Create the Space private.")
    force: bool = option(
        False,
        help="Deploy over an existing Space that cxr did not deploy (its app.py, README.md and "
        "requirements.txt are replaced; other files stay).",
    )
    commit_message: Optional[str] = option(None, help="Commit message (default: 'Deploy cxr app with N model(s)').")
    examples: Optional[str] = option(
        None,
        help="Kaggle-layout folder from which one film per class that every model held out from training (their "
        "published split.json) is uploaded to the Space's examples/ and offered there. The films keep the terms "
        "of the database they come from: check that you may publish them.",
        metavar="DIR",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m cxr.hub``, with its two sub-commands."""
    parser = argparse.ArgumentParser(
        prog=program_name("python -m cxr.hub"),
        description="Publish cxr runs on the Hugging Face Hub, and deploy a Space that shows them. "
        "Research use only — not for diagnosis.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser(
        "push",
        help="Publish a finished run folder (model, model card, metrics, plots, split).",
        formatter_class=HelpFormatter,
    )
    add_option_flags(push, PushOptions)
    space = sub.add_parser(
        "space",
        help="Create or update a Gradio Space that shows published models side by side (app, package, "
        "pinned requirements, README front matter, model list); every check runs before any upload.",
        formatter_class=HelpFormatter,
    )
    add_option_flags(space, SpaceOptions)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m cxr.hub``."""
    parser = build_parser()
    command = parser.parse_args(argv).command
    if command == "space":
        opts = parse_options(parser, SpaceOptions, argv)
        return run_cli(lambda: print(_deploy(opts)))
    push = parse_options(parser, PushOptions, argv)
    return run_cli(lambda: print(_push(push)))


def _push(opts: PushOptions) -> str:
    from cxr.publishing.publish import push_run  # the Hub client loads only once the flags parse

    return push_run(
        Path(opts.run_dir),
        opts.repo_id,
        private=opts.private,
        commit_message=opts.commit_message,
        eval_dirs=[Path(d) for d in opts.eval_dir],
    )


def _deploy(opts: SpaceOptions) -> str:
    from cxr.publishing.space import deploy_space  # the Hub client loads only once the flags parse

    models = [m.strip() for m in opts.models.split(",") if m.strip()]
    return deploy_space(
        opts.space_id,
        models,
        private=opts.private,
        commit_message=opts.commit_message,
        force=opts.force,
        examples=_space_examples(opts.examples, models) if opts.examples else (),
    )


def _space_examples(folder: str, model_ids: Sequence[str]) -> List[Tuple[str, Path]]:
    """The films of ``folder`` a Space offers: one per class of the models (every class any of them has) that
    every model held out (their published splits) and that the Space will show: it decodes and no model's
    out-of-distribution guard flags it (the published models are downloaded and asked, as the Space's app will
    ask them). The folder's other class folders are left out."""
    from cxr.app.board import ModelBoard  # the models load only for a Space deployed with examples

    if not Path(folder).is_dir():
        raise CXRError(f"--examples folder not found: {folder}; nothing was uploaded")
    board = ModelBoard.load(model_ids)
    broken = [f"{m.ref} ({m.error})" for m in board.models if not m.available]
    if broken:
        raise CXRError(f"could not load {', '.join(broken)} to screen the examples; nothing was uploaded")
    splits = {m: training_split(m) for m in model_ids}
    unknown = [m for m, split in splits.items() if split is None]
    if unknown:
        raise CXRError(
            f"the training films of {', '.join(unknown)} are not known (no {SPLIT_NAME} published beside its "
            "config.json), so no example can be called held out; nothing was uploaded"
        )
    classes = board.class_names
    choice = choose_examples(folder, splits, screen_with(board), classes=classes)
    for line in choice.problems:
        _logger.warning("%s", line)
    chosen = [(e.file_name, e.path) for e in choice.examples if e.held_out]
    lacking = [c for c in classes if not any(e.true_class == c and e.held_out for e in choice.examples)]
    if lacking:  # one film of every class the models have, or no examples at all
        raise CXRError(
            f"{folder} has no {', '.join(lacking)} film that every model held out from training and shows; "
            "nothing was uploaded"
        )
    _logger.info("examples for the Space: %s", ", ".join(name for name, _ in chosen))
    return chosen
