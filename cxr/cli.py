"""Every command line of cxr, in one place: ``train_accelerate.py``, ``app.py``, ``python -m cxr.eval``,
``python -m cxr.cv``, ``python -m cxr.hub`` and ``python -m cxr.study``.

Each parser gives every flag help text and checks arguments up front; user mistakes
(:class:`CXRError`) print one clear ``error:`` line and exit with status 2, before any output
file is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from cxr.allocator import keep_freed_memory
from cxr.errors import CXRError
from cxr.run_folder import CVFolder

__all__ = [
    "EPILOG",
    "program_name",
    "build_train_parser",
    "build_eval_parser",
    "build_app_parser",
    "parse_cache_sweep",
    "train_main",
    "eval_main",
    "app_main",
    "predict_main",
    "build_predict_parser",
    "cv_main",
    "hub_main",
    "study_main",
    "run_cli",
]

_logger = logging.getLogger(__name__)

#: Shown under every command's --help.
EPILOG = (
    "Research use only — not for diagnosis. Environment: CXR_KEEP_FREED_MEMORY=0 keeps the C library's "
    "allocator defaults (cxr/allocator.py; by default freed memory is kept for reuse, which is faster)."
)


def run_cli(fn: Callable[[], None]) -> int:
    """Set up the process (logging; glibc keeps freed memory, :mod:`cxr.allocator`) and run ``fn``,
    turning a :class:`CXRError`, or a full disk, into a one-line message and exit status 2."""
    keep_freed_memory()
    logging.basicConfig(level=os.environ.get("CXR_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "httpx", "httpx2", "huggingface_hub", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
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
    return 0


#: ``app.py --max-sessions``: the visitor sessions whose state the server keeps. Gradio keeps one per session
#: hash (every program's request is a session of its own) until its 10,000th, so an app's memory grows for days;
#: a visitor who needs an evicted state (the image kept to analyse again) is asked to upload the film again.
MAX_SESSIONS = 100
#: ``app.py --upload-space``: megabytes Gradio's cache may hold.
UPLOAD_SPACE_MB = 1024

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
        if "default" in text.lower() or action.default in (None, False):
            return text
        return super()._get_help_string(action)


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=program_name(prog),
        description=description,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )


def _data_arg(parser: argparse.ArgumentParser, help_text: str) -> None:
    default = os.environ.get("CXR_DATA")
    parser.add_argument("--data", default=default, required=default is None, help=help_text + " Default: $CXR_DATA.")


#: The ``--help`` sections of ``train_accelerate.py``, in order, keyed by each field's ``group``.
_TRAIN_GROUPS = {
    "model": "model",
    "data": "data and split",
    "recipe": "training recipe (a flag not given takes --preset's value)",
    "run folder": "run folder, resuming and tracking",
    "hardware": "processes, threads and precision",
    "hub": "publishing to the Hugging Face Hub",
}


def add_config_flags(
    parser: argparse.ArgumentParser, config_cls: type, names: Optional[Sequence[str]] = None, grouped: bool = True
) -> None:
    """Add a flag for each field of the dataclass ``config_cls`` declared with :func:`cxr.training.config.option`:
    name, default, help, choices and section all come from the field.

    Args:
        parser: the parser to add to.
        config_cls: a dataclass such as :class:`~cxr.training.config.TrainConfig`.
        names: only these fields (default: every declared one).
        grouped: list them under their group's section (:data:`_TRAIN_GROUPS`), else in the parser's own.

    Example:
        >>> from cxr.training.config import TrainConfig
        >>> p = argparse.ArgumentParser()
        >>> add_config_flags(p, TrainConfig, names=("epochs", "final_fit"))
        >>> p.parse_args(["--epochs", "3", "--no-final-fit"])
        Namespace(epochs=3, final_fit=False)
    """
    sections = {key: parser.add_argument_group(title) for key, title in _TRAIN_GROUPS.items()} if grouped else {}
    for f in dataclasses.fields(config_cls):
        if "help" in f.metadata and (names is None or f.name in names):
            _add_field(sections.get(f.metadata["group"], parser), f)


def _add_field(parser, f: dataclasses.Field) -> None:
    meta = dict(f.metadata)
    help_text, choices, env = meta.pop("help"), meta.pop("choices"), meta.pop("env", None)
    meta.pop("group")
    kwargs: Dict[str, Any] = {"help": help_text() if callable(help_text) else help_text, **meta}
    if choices is not None:
        kwargs["choices"] = tuple(choices() if callable(choices) else choices)
    required = f.default is dataclasses.MISSING
    default = None if required else f.default
    if env is not None:  # the environment gives the default; the flag is required only without it
        default = os.environ.get(env)
        required = default is None
        kwargs["help"] += f" Default: ${env}."
    kind = str(f.type)
    if "bool" in kind:
        kwargs["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
    elif "int" in kind:
        kwargs["type"] = int
    elif "float" in kind:
        kwargs["type"] = float
    if required:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def build_train_parser() -> argparse.ArgumentParser:
    """The parser of ``train_accelerate.py``, made from :class:`~cxr.training.config.TrainConfig`'s fields."""
    from cxr.training.config import TrainConfig

    p = _parser(
        "accelerate launch train_accelerate.py",
        "Fine-tune an ImageNet-pretrained timm model to classify chest X-rays into COVID, "
        "Lung_Opacity, Normal and Viral Pneumonia, on CPU, one GPU or many (Accelerate).",
    )
    add_config_flags(p, TrainConfig)
    return p


def train_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``train_accelerate.py``."""
    from cxr.training.config import TrainConfig
    from cxr.training.loop import train

    args = build_train_parser().parse_args(argv)

    def run():
        from accelerate import PartialState

        train(TrainConfig(**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}))
        PartialState().destroy_process_group()

    return run_cli(run)


def build_eval_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m cxr.eval`` (its data flags declared once, on :class:`TrainConfig`'s fields)."""
    from cxr.training.config import TrainConfig

    p = _parser(
        "python -m cxr.eval",
        "Evaluate a cxr checkpoint on every image of a folder in the Kaggle layout — all four classes, or any of "
        "them (external validation: a set from another hospital) — or of a dataset: metrics.json, predictions.csv, "
        "report.md and confusion_matrix.png, with every figure over the classes present and, when the films' "
        "sources are known (one sub-folder per source, or a metadata.csv with a source_repo or source column), per "
        "source. Research use only — not for diagnosis.",
    )
    p.add_argument("--model", required=True, help="A run's model/ folder or a Hub repository id (ORG/NAME).")
    _data_arg(p, "Image folder in the Kaggle layout (every image is a test image), or a dataset id.")
    add_config_flags(p, TrainConfig, names=("dataset_revision", "dataset_config"), grouped=False)
    p.add_argument("--output-dir", required=True, type=Path, help="Folder for the evaluation files.")
    p.add_argument("--batch-size", type=int, default=64, help="Images per forward pass and process.")
    p.add_argument("--num-workers", type=int, default=0, help="Data-loader worker processes.")
    add_config_flags(p, TrainConfig, names=("cache_dir", "skip_bad_images"), grouped=False)
    p.add_argument(
        "--label-map",
        action="append",
        default=[],
        metavar="NAME=CLASS",
        help="Map another dataset's class folder or label name onto one of ours, e.g. 'Pneumonia=Viral Pneumonia' "
        "or 'No finding=Normal' (repeatable). A name that is neither one of COVID, Lung_Opacity, Normal, Viral "
        "Pneumonia nor mapped is refused.",
    )
    return p


def eval_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m cxr.eval``."""
    from cxr.training.evaluation import evaluate_folder

    args = build_eval_parser().parse_args(argv)

    def run():
        from cxr.data.labelling import Labelling

        if args.batch_size < 1:
            raise CXRError(f"--batch-size must be at least 1, got {args.batch_size}")
        if args.num_workers < 0:
            raise CXRError(f"--num-workers must be >= 0, got {args.num_workers}")
        labelling = Labelling.parse(args.label_map, partial=True)
        from cxr.run_folder import check_writable

        check_writable(args.output_dir)
        evaluate_folder(
            args.model,
            args.data,
            args.output_dir,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            cache_dir=args.cache_dir,
            skip_bad_images=args.skip_bad_images,
            dataset_revision=args.dataset_revision,
            dataset_config=args.dataset_config,
            labelling=labelling,
        )

    return run_cli(run)


def build_predict_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m cxr.predict``."""
    from cxr.models.cam import CAM_METHODS

    p = _parser(
        "python -m cxr.predict",
        "Classify chest X-rays (PNG, JPEG, DICOM) with one or more cxr models: one CSV row per file and model, "
        "with the probabilities, the argmax prediction, the decision by the model's saved operating point, the "
        "out-of-distribution flag and, for a file that cannot be read, why. Research use only — not for diagnosis.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="Files, folders (searched recursively) or glob patterns.")
    p.add_argument(
        "--model",
        action="append",
        required=True,
        help="A model folder or Hub repository id (ORG/NAME); repeat for several models.",
    )
    p.add_argument(
        "--output", type=Path, default=Path("cxr-predict.csv"), help="The CSV written (default: cxr-predict.csv)."
    )
    p.add_argument(
        "--cam-dir",
        type=Path,
        default=None,
        help="Also write one Grad-CAM PNG per file and model (the decided class explained) into CAM_DIR/<model>/.",
    )
    p.add_argument("--cam-method", default="GradCAM", choices=CAM_METHODS, help="The CAM method for --cam-dir.")
    p.add_argument("--batch-size", type=int, default=32, help="Films per forward pass.")
    p.add_argument("--num-workers", type=int, default=0, help="Loader worker processes decoding films.")
    return p


def predict_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m cxr.predict`` (``cxr-predict``): exit 0 when at least one file was classified,
    2 when none could be."""
    args = build_predict_parser().parse_args(argv)
    outcome: Dict[str, int] = {}

    def run():
        from cxr.data.inputs import find_films
        from cxr.labels import DISCLAIMER
        from cxr.run_folder import check_writable

        if args.batch_size < 1:
            raise CXRError(f"--batch-size must be at least 1, got {args.batch_size}")
        if args.num_workers < 0:
            raise CXRError(f"--num-workers must be >= 0, got {args.num_workers}")
        if args.output.is_dir():
            raise CXRError(f"--output {args.output} is a folder; name the CSV file to write")
        check_writable(args.output.absolute().parent, flag="--output")
        if args.cam_dir is not None:
            check_writable(args.cam_dir, flag="--cam-dir")
        found = find_films(args.inputs)  # before any model loads
        from cxr.models.batch_predict import predict_films, write_rows
        from cxr.models.classifier import CXRClassifier

        classifiers = [CXRClassifier.from_pretrained(ref) for ref in args.model]
        for clf in classifiers:
            _logger.info("%s: decision = %s", clf.source, clf.decision_rule)
        if found.other_files:
            _logger.info("%d file(s) of other types in the folders left out", found.other_files)
        rows = predict_films(classifiers, found.files, args.batch_size, args.num_workers, args.cam_dir, args.cam_method)
        outcome.update(write_rows(args.output, rows))
        print(
            f"{outcome['classified']} of {len(found.files)} file(s) classified by {len(classifiers)} model(s), "
            f"{outcome['unreadable']} could not be read (their rows say why): {args.output}. {DISCLAIMER}"
        )
        if not outcome["classified"]:
            raise CXRError("no file could be classified (the error column of each row says why)")

    return run_cli(run)


def build_app_parser() -> argparse.ArgumentParser:
    """The parser of ``python app.py``."""
    from cxr.app.page import KEPT_IMAGES_MB
    from cxr.app.server import UPLOAD_WAIT_SECONDS

    p = _parser(
        "python app.py",
        "Serve the Gradio app: every model's prediction, probabilities and Grad-CAM for an uploaded chest X-ray.",
    )
    p.add_argument(
        "--models",
        default=None,
        help="Comma-separated Hub ids and/or model folders (default: $CXR_APP_MODELS, else the lines "
        "of app_models.txt, else every runs/*/model).",
    )
    p.add_argument(
        "--quickstart",
        default=None,
        metavar="DATA",
        help="First train two models on this Kaggle-layout folder, unless done: EfficientNet-Lite0 (offline "
        "ImageNet weights) and the pixel baseline logreg, into QUICKSTART_DIR/quickstart-lite0 and "
        "QUICKSTART_DIR/quickstart-logreg; show both, before any other model.",
    )
    p.add_argument(
        "--quickstart-dir",
        default="runs",
        metavar="QUICKSTART_DIR",
        help="Folder the quick-start runs are written to (default: runs).",
    )
    p.add_argument(
        "--examples",
        default=None,
        metavar="DIR",
        help="Kaggle-layout folder from which one film per class is offered as an example: one held out from "
        "training by every model shown (their split.json), that decodes and that no model's out-of-distribution "
        "guard flags (default: the --quickstart folder, else ./examples if there is one, as on a Space).",
    )
    p.add_argument(
        "--cache-sweep",
        default=None,
        metavar="EVERY,AGE",
        help="Gradio's cache sweep: every EVERY seconds, delete what the app stored (heat maps sent, copies of "
        "examples clicked) more than AGE seconds ago; uploads go sooner (--upload-wait) (default: 300,900).",
    )
    p.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="Interface to listen on (0.0.0.0 to serve a network).",
    )
    p.add_argument(
        "--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), help="Port to listen on."
    )
    p.add_argument("--share", action="store_true", help="Ask Gradio for a public share link (needs internet).")
    p.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="Requests processed at once by the whole server, every endpoint together (the page, /analyse, "
        "/classify, /predict); the rest wait in one queue.",
    )
    p.add_argument(
        "--upload-space",
        type=int,
        default=UPLOAD_SPACE_MB,
        metavar="MB",
        help="Most megabytes Gradio's cache may hold (uploads waiting to be analysed, heat maps sent, examples "
        "handed out); an upload that would pass it is refused with a message until the sweep frees room "
        f"(default: {UPLOAD_SPACE_MB}).",
    )
    p.add_argument(
        "--upload-wait",
        type=int,
        default=UPLOAD_WAIT_SECONDS,
        metavar="SECONDS",
        help="An upload no request analyses within this many seconds is deleted from the server (the page "
        f"analyses its upload at once; a program sends its request after uploading) (default: {UPLOAD_WAIT_SECONDS}).",
    )
    p.add_argument(
        "--kept-images",
        type=int,
        default=KEPT_IMAGES_MB,
        metavar="MB",
        help="Most megabytes of decoded images every page together keeps to analyse its upload again (at most 4 "
        "each); the least recently used go first, and that page is asked to upload its film again "
        f"(default: {KEPT_IMAGES_MB}).",
    )
    p.add_argument(
        "--monitoring",
        action="store_true",
        help="Serve Gradio's /monitoring dashboard (request counts per endpoint, readable by anyone who can reach "
        "the app); off by default.",
    )
    p.add_argument("--max-queue", type=int, default=64, help="Requests that may wait in the queue.")
    p.add_argument(
        "--max-sessions",
        type=int,
        default=MAX_SESSIONS,
        metavar="N",
        help="Visitor sessions whose state the server keeps (Gradio's per-session copy of the page, and which "
        "image it keeps to analyse again): the N most recently active; an older page is asked to upload its film "
        f"again. Each costs a few hundred KB, so N bounds the server's memory (default: {MAX_SESSIONS}).",
    )
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


def app_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python app.py``."""
    args = build_app_parser().parse_args(argv)

    def run():
        from cxr.app.board import ModelBoard, resolve_model_refs
        from cxr.app.examples import choose_examples, screen_with, training_split
        from cxr.app.kept import KeptImages
        from cxr.app.page import CACHE_SWEEP, KEPT_IMAGE_SECONDS, build_demo
        from cxr.app.quickstart import ensure_quickstart_models
        from cxr.app.server import AppFiles, ServerLimits, launch
        from cxr.locations import EXAMPLES_DIR

        for flag, value in (
            ("--concurrency", args.concurrency),
            ("--max-sessions", args.max_sessions),
            ("--upload-space", args.upload_space),
            ("--upload-wait", args.upload_wait),
            ("--kept-images", args.kept_images),
        ):
            if value < 1:
                raise CXRError(f"{flag} must be at least 1, got {value}")
        sweep = parse_cache_sweep(args.cache_sweep) if args.cache_sweep else CACHE_SWEEP
        if args.examples and not Path(args.examples).is_dir():
            raise CXRError(f"--examples folder not found: {args.examples}")
        refs = resolve_model_refs(args.models)
        if args.quickstart:
            quick = ensure_quickstart_models(args.quickstart, args.quickstart_dir)
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
        example_dir = args.examples or args.quickstart or (EXAMPLES_DIR if Path(EXAMPLES_DIR).is_dir() else None)
        examples = []
        if example_dir and board.available:
            splits = {m.ref: training_split(m.ref) for m in board.available}
            choice = choose_examples(example_dir, splits, screen_with(board))
            for line in choice.problems:
                _logger.warning("%s", line)
            examples = choice.examples
            _logger.info("examples: %s", ", ".join(e.file_name for e in examples) or "none")
        with AppFiles(args.upload_wait) as files:
            kept = KeptImages(args.kept_images << 20, KEPT_IMAGE_SECONDS)
            demo = build_demo(board, examples, cache_sweep=sweep, kept_images=kept, uploads=files.uploads)
            demo.queue(default_concurrency_limit=args.concurrency, max_size=args.max_queue)
            limits = ServerLimits(args.max_sessions, args.upload_space, args.monitoring)
            launch(
                demo,
                files,
                limits,
                host=args.host,
                port=args.port,
                share=args.share,
                allowed_paths=[str(e.path.resolve()) for e in examples],
            )

    return run_cli(run)


def cv_main(argv: Optional[List[str]] = None) -> int:
    """``python -m cxr.cv``: every training flag of ``train_accelerate.py``, plus ``--folds`` and ``--bootstrap``."""
    import dataclasses

    from cxr.training.config import TrainConfig
    from cxr.training.cv import refuse_per_run_flags, run_cv
    from cxr.training.preflight import preflight

    p = build_train_parser()
    p.prog = program_name("python -m cxr.cv")
    p.description = (
        "Cross-validate a training recipe: one model per stratified fold, every image scored once out of "
        "fold; accuracy, COVID recall, images called Normal, macro AUROC and ECE with bootstrap 95% "
        "intervals, and a per-fold table. --output-dir is the CV folder; every other flag is the recipe "
        "of each fold. A rerun resumes (finished folds are kept)."
    )
    group = p.add_argument_group("cross-validation")
    group.add_argument(
        "--folds", type=int, default=5, help="Number of stratified folds (2 to the smallest class's size)."
    )
    group.add_argument("--bootstrap", type=int, default=1000, help="Bootstrap resamples for the 95%% intervals.")
    args = p.parse_args(argv)

    def run():
        if args.bootstrap < 100:
            raise CXRError(f"--bootstrap must be at least 100, got {args.bootstrap}")
        if args.folds < 2:
            raise CXRError(f"--folds must be at least 2, got {args.folds}")
        fields = {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("folds", "bootstrap")
        }
        cfg = TrainConfig(**fields)
        refuse_per_run_flags(cfg)
        # checked as a training run's folder would be (a run folder is refused), then each fold's run replaces its own
        cfg = dataclasses.replace(preflight(cfg), overwrite_output_dir=True)
        result = run_cv(cfg, args.folds, args.bootstrap)
        from accelerate import PartialState

        state = PartialState()
        if state.is_main_process and result:
            oof = result["out_of_fold"]
            print(
                f"out of fold ({result['images']} images): accuracy {100 * oof['accuracy']['value']:.1f}% "
                f"[{100 * oof['accuracy']['low']:.1f}, {100 * oof['accuracy']['high']:.1f}]; wrote "
                f"{CVFolder(cfg.output_dir).report}"
            )
        state.destroy_process_group()

    return run_cli(run)


def hub_main(argv: Optional[List[str]] = None) -> int:
    """``python -m cxr.hub push RUN_DIR ORG/NAME [--private]`` and ``python -m cxr.hub space OWNER/NAME --models ...``."""
    parser = argparse.ArgumentParser(
        prog=program_name("python -m cxr.hub"),
        description="Publish cxr runs on the Hugging Face Hub, and deploy a Space that shows them. "
        "Research use only — not for diagnosis.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="Publish a finished run folder (model, model card, metrics, plots, split).")
    push.add_argument("run_dir", type=Path, help="A train_accelerate.py --output-dir folder.")
    push.add_argument("repo_id", help="Hub model repository ORG/NAME (created if missing).")
    push.add_argument("--private", action="store_true", help="Create the repository private.")
    push.add_argument(
        "--commit-message", default=None, help="Commit message (default: 'Upload <model> trained with cxr')."
    )
    push.add_argument(
        "--eval-dir",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="A python -m cxr.eval --output-dir of this model on other data (e.g. films from another hospital); "
        "its figures fill the model card's 'External validation' section (numbers only: none of its files is "
        "uploaded). Repeatable.",
    )
    space = sub.add_parser(
        "space",
        help="Create or update a Gradio Space that shows published models side by side (app, package, "
        "pinned requirements, README front matter, model list); every check runs before any upload.",
    )
    space.add_argument("space_id", help="Hub Space OWNER/NAME (created if missing).")
    space.add_argument(
        "--models",
        required=True,
        metavar="ORG/M1,ORG/M2",
        help="Comma-separated ids of published cxr models, in the order the app shows them.",
    )
    space.add_argument("--private", action="store_true", help="Create the Space private.")
    space.add_argument(
        "--force",
        action="store_true",
        help="Deploy over an existing Space that cxr did not deploy (its app.py, README.md and "
        "requirements.txt are replaced; other files stay).",
    )
    space.add_argument(
        "--commit-message", default=None, help="Commit message (default: 'Deploy cxr app with N model(s)')."
    )
    space.add_argument(
        "--examples",
        default=None,
        metavar="DIR",
        help="Kaggle-layout folder from which one film per class that every model held out from training (their "
        "published split.json) is uploaded to the Space's examples/ and offered there. The films keep the terms "
        "of the database they come from: check that you may publish them.",
    )
    args = parser.parse_args(argv)

    def run():
        if args.command == "space":
            from cxr.hub.space import deploy_space

            models = [m.strip() for m in args.models.split(",") if m.strip()]
            url = deploy_space(
                args.space_id,
                models,
                private=args.private,
                commit_message=args.commit_message,
                force=args.force,
                examples=_space_examples(args.examples, models) if args.examples else (),
            )
        else:
            from cxr.hub.publish import push_run

            url = push_run(
                args.run_dir,
                args.repo_id,
                private=args.private,
                commit_message=args.commit_message,
                eval_dirs=args.eval_dir,
            )
        print(url)

    return run_cli(run)


def _space_examples(folder: str, model_ids: Sequence[str]) -> List[Tuple[str, Path]]:
    """The films of ``folder`` a Space offers: one per class that every model held out (their published splits)
    and that the Space will show: it decodes and no model's out-of-distribution guard flags it (the published
    models are downloaded and asked, as the Space's app will ask them)."""
    from cxr.app.board import ModelBoard
    from cxr.app.examples import choose_examples, screen_with, training_split
    from cxr.labels import CLASS_NAMES
    from cxr.run_folder import SPLIT_NAME

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
    choice = choose_examples(folder, splits, screen_with(board))
    for line in choice.problems:
        _logger.warning("%s", line)
    chosen = [(e.file_name, e.path) for e in choice.examples if e.held_out]
    lacking = [c for c in CLASS_NAMES if not any(e.true_class == c and e.held_out for e in choice.examples)]
    if lacking:  # the Space's app reads examples/ as a Kaggle-layout folder: every class, or no examples at all
        raise CXRError(
            f"{folder} has no {', '.join(lacking)} film that every model held out from training and shows; "
            "nothing was uploaded"
        )
    _logger.info("examples for the Space: %s", ", ".join(name for name, _ in chosen))
    return chosen


def study_main(argv: Optional[List[str]] = None) -> int:
    """``python -m cxr.study``."""
    from cxr.study.runner import PRESETS

    p = argparse.ArgumentParser(
        prog=program_name("python -m cxr.study"),
        description="Rerun the study: train every model on one split (seed 1) and write study.md/study.json with "
        "Table 1, per-class tables, bootstrap intervals, McNemar's tests, calibration and Grad-CAM figures.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    _data_arg(p, "Image folder in the Kaggle layout (or a dataset id).")
    p.add_argument("--output-dir", required=True, type=Path, help="Study folder (finished runs in it are skipped).")
    p.add_argument(
        "--models",
        default=None,
        help="Comma-separated models (default: the preset's: "
        + "; ".join(f"{k}: {','.join(v.models)}" for k, v in PRESETS.items())
        + ").",
    )
    p.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="cpu-quick",
        help="paper: the study's protocol; cpu-quick: shrunk (96 px, 6 epochs) to finish on a small CPU; its time is in the README.",
    )
    p.add_argument("--clahe", action="store_true", help="Also train every model with CLAHE before resizing.")
    p.add_argument("--num-workers", type=int, default=2, help="Data-loader workers per run.")
    p.add_argument("--cache-dir", default=None, help="Folder for decoded, resized images.")
    p.add_argument("--bootstrap", type=int, default=1000, help="Bootstrap resamples for the 95%% intervals.")
    p.add_argument("--cam-images", type=int, default=2, help="Test images per class in the Grad-CAM figure.")
    args = p.parse_args(argv)

    def run():
        if args.bootstrap < 100:
            raise CXRError(f"--bootstrap must be at least 100, got {args.bootstrap}")
        models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        from cxr.study.runner import run_study

        run_study(
            args.data,
            args.output_dir,
            models,
            args.preset,
            args.clahe,
            args.num_workers,
            args.cache_dir,
            args.bootstrap,
            args.cam_images,
        )
        from accelerate import PartialState

        if PartialState().is_main_process:
            from cxr.study.report import STUDY_MD

            print(f"wrote {args.output_dir / STUDY_MD}")

    return run_cli(run)
