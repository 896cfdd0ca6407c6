"""``python app.py``: the Gradio app that shows every model's prediction, probabilities and Grad-CAM side by side
(its page is :mod:`cxr.app.page`, its computations :mod:`cxr.app.board`)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from cxr.app.board import ModelBoard, resolve_model_refs
from cxr.app.examples import Example, KnownFilms, Split, choose_examples, screen_with, training_record
from cxr.app.gradio_internals import say_busy_when_full, warn_if_untested_gradio
from cxr.app.kept import KeptImages
from cxr.app.page import CACHE_SWEEP, KEPT_IMAGE_SECONDS, KEPT_IMAGES_MB, build_demo
from cxr.app.quickstart import ensure_quickstart_models
from cxr.app.server import UPLOAD_WAIT_SECONDS, AppFiles, ServerLimits, launch
from cxr.commands.common import add_option_flags, check_options, make_parser, parse_options, run_cli
from cxr.errors import CXRError
from cxr.locations import EXAMPLES_DIR
from cxr.options import option

__all__ = ["AppOptions", "MAX_SESSIONS", "UPLOAD_SPACE_MB", "build_parser", "main", "parse_cache_sweep"]

_logger = logging.getLogger(__name__)

#: ``app.py --max-sessions``: the visitor sessions whose state the server keeps. Gradio keeps one per session
#: hash (every program's request is a session of its own) until its 10,000th, so an app's memory grows for days;
#: a visitor who needs an evicted state (the image kept to analyse again) is asked to upload the film again.
MAX_SESSIONS = 100
#: ``app.py --upload-space``: megabytes Gradio's cache may hold.
UPLOAD_SPACE_MB = 1024


@dataclasses.dataclass(kw_only=True)
class AppOptions:
    """The flags of ``python app.py``."""

    models: Optional[str] = option(
        None,
        help="Comma-separated Hub ids and/or model folders (default: $CXR_APP_MODELS, else the lines "
        "of app_models.txt, else every runs/*/model).",
    )
    quickstart: Optional[str] = option(
        None,
        help="First train two models on this Kaggle-layout folder, unless done: EfficientNet-Lite0 (offline "
        "ImageNet weights) and the pixel baseline logreg, into QUICKSTART_DIR/quickstart-lite0 and "
        "QUICKSTART_DIR/quickstart-logreg; show both, before any other model.",
        metavar="DATA",
    )
    quickstart_dir: str = option(
        "runs", help="Folder the quick-start runs are written to (default: runs).", metavar="QUICKSTART_DIR"
    )
    examples: Optional[str] = option(
        None,
        help="Kaggle-layout folder from which one film per class is offered as an example: one held out from "
        "training by every model shown (their split.json), that decodes and that no model's out-of-distribution "
        "guard flags (default: the --quickstart folder, else ./examples if there is one, as on a Space).",
        metavar="DIR",
    )
    cache_sweep: Optional[str] = option(
        None,
        help="Gradio's cache sweep: every EVERY seconds, delete what the app stored (heat maps sent, copies of "
        "examples clicked) more than AGE seconds ago; uploads go sooner (--upload-wait) (default: 300,900).",
        metavar="EVERY,AGE",
    )
    host: str = option(
        os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="Interface to listen on (0.0.0.0 to serve a network)."
    )
    port: int = option(int(os.environ.get("GRADIO_SERVER_PORT", "7860")), help="Port to listen on.")
    share: bool = option(False, help="Ask Gradio for a public share link (needs internet).")
    concurrency: int = option(
        2,
        help="Requests processed at once by the whole server, every endpoint together (the page, /analyse, "
        "/classify, /predict); the rest wait in one queue.",
        minimum=1,
    )
    upload_space: int = option(
        UPLOAD_SPACE_MB,
        help="Most megabytes Gradio's cache may hold (uploads waiting to be analysed, heat maps sent, examples "
        "handed out); an upload that would pass it is refused with a message until room is freed (uploads analysed "
        f"or expired, the sweep) (default: {UPLOAD_SPACE_MB}).",
        metavar="MB",
        minimum=1,
    )
    upload_wait: int = option(
        UPLOAD_WAIT_SECONDS,
        help="An upload no request analyses within this many seconds is deleted from the server (the page "
        f"analyses its upload at once; a program sends its request after uploading) (default: {UPLOAD_WAIT_SECONDS}).",
        metavar="SECONDS",
        minimum=1,
    )
    kept_images: int = option(
        KEPT_IMAGES_MB,
        help="Most megabytes of decoded images every page together keeps to analyse its upload again (at most 4 "
        "each); the least recently used go first, and that page is asked to upload its film again "
        f"(default: {KEPT_IMAGES_MB}).",
        metavar="MB",
        minimum=1,
    )
    monitoring: bool = option(
        False,
        help="Serve Gradio's /monitoring dashboard (request counts per endpoint, readable by anyone who can reach "
        "the app); off by default.",
    )
    max_queue: int = option(64, help="Requests that may wait in the queue.")
    max_sessions: int = option(
        MAX_SESSIONS,
        help="Visitor sessions whose state the server keeps (Gradio's per-session copy of the page, and which "
        "image it keeps to analyse again): the N most recently active; an older page is asked to upload its film "
        f"again. Each costs a few hundred KB, so N bounds the server's memory (default: {MAX_SESSIONS}).",
        metavar="N",
        minimum=1,
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python app.py``."""
    p = make_parser(
        "python app.py",
        "Serve the Gradio app: every model's prediction, probabilities and Grad-CAM for an uploaded chest X-ray.",
    )
    add_option_flags(p, AppOptions)
    return p


def parse_cache_sweep(text: str) -> Tuple[int, int]:
    """``--cache-sweep EVERY,AGE`` as two whole numbers of seconds, each at least 1."""
    parts = text.split(",")
    try:
        every, age = (int(p) for p in parts)
    except ValueError:
        every = age = 0
    if len(parts) != 2 or every < 1 or age < 1:
        raise CXRError(f"--cache-sweep takes EVERY,AGE in whole seconds, each at least 1 (e.g. 300,900), got {text!r}")
    return every, age


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python app.py``."""
    opts = parse_options(build_parser(), AppOptions, argv)
    return run_cli(lambda: _serve(opts))


def _serve(opts: AppOptions) -> None:
    check_options(opts)
    warn_if_untested_gradio()  # one line, before the models load, when the app's Gradio workarounds are untested
    sweep = parse_cache_sweep(opts.cache_sweep) if opts.cache_sweep else CACHE_SWEEP
    if opts.examples and not Path(opts.examples).is_dir():
        raise CXRError(f"--examples folder not found: {opts.examples}")
    refs = resolve_model_refs(opts.models)
    if opts.quickstart:
        quick = ensure_quickstart_models(opts.quickstart, opts.quickstart_dir)
        known = {Path(q).resolve() for q in quick}
        refs = quick + [r for r in refs if Path(r).resolve() not in known]
    if not refs:  # a fresh Space or checkout: serve a page that says what the app needs, never exit
        _logger.warning(
            "no models to show: pass --models, list them in app_models.txt, train one into "
            "runs/NAME/model, or use --quickstart DATA; serving a page that says so"
        )
    board = ModelBoard.load(refs)
    for m in board.models:
        _logger.info("%s: %s", m.ref, "ready" if m.available else f"unavailable ({m.error})")
    splits: Dict[str, Optional[Split]] = {}
    contents: Dict[str, Dict[str, str]] = {}
    for m in board.available:
        splits[m.ref], contents[m.ref] = training_record(m.ref)
    known = KnownFilms(splits, contents)
    del contents  # this function runs as long as the app serves: the digests are kept in `known` alone
    _logger.info("films known by their bytes (an upload of one says which models trained on it): %d", len(known))
    examples = _examples(opts, board, splits)
    with AppFiles(opts.upload_wait) as files:
        kept = KeptImages(opts.kept_images << 20, KEPT_IMAGE_SECONDS)
        demo = build_demo(board, files.uploads, examples, cache_sweep=sweep, kept_images=kept, known_films=known)
        demo.queue(default_concurrency_limit=opts.concurrency, max_size=opts.max_queue)
        say_busy_when_full(demo)  # a visitor beyond the queue is told the app is busy, in one sentence
        limits = ServerLimits(opts.max_sessions, opts.upload_space, opts.monitoring)
        allowed = [str(e.path.resolve()) for e in examples]
        launch(demo, files, limits, host=opts.host, port=opts.port, share=opts.share, allowed_paths=allowed)


def _examples(opts: AppOptions, board: ModelBoard, splits: Dict[str, Optional[Split]]) -> List[Example]:
    """The example films the page offers (see ``--examples``), each held out by every model shown (``splits``:
    each available model's training split, :func:`training_split`)."""
    folder = opts.examples or opts.quickstart or (EXAMPLES_DIR if Path(EXAMPLES_DIR).is_dir() else None)
    if not folder or not board.available:
        return []
    choice = choose_examples(folder, splits, screen_with(board), classes=board.class_names)
    for line in choice.problems:
        _logger.warning("%s", line)
    _logger.info("examples: %s", ", ".join(e.file_name for e in choice.examples) or "none")
    return list(choice.examples)
