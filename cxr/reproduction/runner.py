"""The whole study in one command: every model on one split, then one comparison report.

``python -m cxr.study --data DIR --output-dir runs/study [--models …] [--preset paper|cpu-quick] [--clahe]``
makes one split (seed 1), trains every listed model on it through :func:`cxr.training.loop.train` (the
code path of ``train_accelerate.py``; ``accelerate launch -m cxr.study …`` works too), skips runs
that already finished and resumes interrupted ones, then writes ``study.md``, ``study.json``,
``reliability.png`` and ``gradcam_grid.png`` — every number recomputed from the runs' saved
predictions. Research use only — not for diagnosis.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import timm

from cxr.data.data_source import load_radiographs
from cxr.data.splits import SPLITS, load_split, save_split, stratified_split
from cxr.errors import CXRError
from cxr.models import model_spec
from cxr.models.pretrained import check_pretrained_available, offline_weights_file
from cxr.reproduction.analysis import analyse_study
from cxr.reproduction.report import write_study_report
from cxr.run_folder import RunFolder
from cxr.training.config import TrainConfig
from cxr.training.loop import train
from cxr.training.resume import has_checkpoint

__all__ = ["STUDY_PRESETS", "StudyArm", "plan_study", "run_study"]

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Preset:
    """How a preset trains each model.

    Attributes:
        models: default ``--models``.
        image_size: input side for every model (one size, so rows compare).
        norm: normalisation for every model.
        epochs / batch_size: ``None`` keeps each model's study default.
        offline_only: models without offline ImageNet weights train from scratch, all layers
            (frozen random layers would be meaningless), instead of failing.
        scratch_twins: models also trained from scratch, to show what ImageNet weights add.
        note: what the preset changes from the paper, for the report.
    """

    models: Sequence[str]
    image_size: int
    norm: str
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    offline_only: bool = False
    scratch_twins: Sequence[str] = ()
    note: str = ""


STUDY_PRESETS: Dict[str, Preset] = {
    "paper": Preset(
        models=("alexnet", "vgg19_bn", "resnet50", "logreg", "tf_efficientnet_lite0"),
        image_size=224,
        norm="radiography",
        scratch_twins=("tf_efficientnet_lite0",),
        note="The study's protocol: 224 px, the radiography normalisation, each model's study epochs, batch size "
        "and trained layers, Adam 5e-4, ImageNet weights (AlexNet, VGG19_bn and ResNet50 need the Hub).",
    ),
    "cpu-quick": Preset(
        models=("logreg", "alexnet", "resnet50", "tf_efficientnet_lite0"),
        image_size=96,
        norm="model",
        epochs=6,
        batch_size=32,
        offline_only=True,
        scratch_twins=("tf_efficientnet_lite0",),
        note="Shrunk to finish in minutes on a 2-core CPU: 96 px, 6 epochs, batch 32 for every model; VGG19_bn is "
        "left out (under 1 image/s on 2 CPU cores); AlexNet and ResNet50 have no offline ImageNet weights and train from "
        "scratch, all layers; EfficientNet-Lite0 keeps its offline ImageNet weights and is also trained "
        "from scratch for comparison.",
    ),
}


@dataclasses.dataclass(frozen=True)
class StudyArm:
    """One training run of the study: its folder name, model and settings."""

    name: str
    model: str
    pretrained: bool
    train_layers: Optional[str]
    clahe: bool = False
    note: str = ""


def plan_study(models: Sequence[str], preset: Preset, clahe: bool = False) -> List[StudyArm]:
    """The runs a study trains, in report order (checked: unknown models fail here, before training)."""
    arms: List[StudyArm] = []
    for name in models:
        spec = model_spec(name)
        cfg = timm.get_pretrained_cfg(spec.name)
        has_weights = bool(cfg and cfg.has_weights) or offline_weights_file(spec.name) is not None
        offline = offline_weights_file(spec.name) is not None
        if preset.offline_only and not offline:
            arm = StudyArm(
                spec.name,
                spec.name,
                False,
                "all",
                note="from scratch, all layers (no offline ImageNet weights)" if has_weights else "",
            )
        else:
            if has_weights and not offline:
                check_pretrained_available(spec.name, cfg)  # offline: fail now, not after hours of other runs
            arm = StudyArm(spec.name, spec.name, True, None)
        arms.append(arm)
        if spec.name in preset.scratch_twins and arm.pretrained:
            arms.append(
                StudyArm(
                    f"{spec.name}-scratch",
                    spec.name,
                    False,
                    "all",
                    note="from scratch, all layers (to compare with ImageNet weights)",
                )
            )
        if clahe:
            arms.append(
                dataclasses.replace(
                    arm,
                    name=f"{arm.name}-clahe",
                    clahe=True,
                    note=(arm.note + "; " if arm.note else "") + "CLAHE before resizing",
                )
            )
    return arms


def _train_arm(
    arm: StudyArm, preset: Preset, data: str, out: Path, split_file: Path, num_workers: int, cache_dir: Optional[str]
) -> str:

    run_dir = out / arm.name
    run = RunFolder(run_dir)
    if run.is_finished():
        return "skipped (finished)"
    resume = "auto" if has_checkpoint(run_dir) else None
    train(
        TrainConfig(
            model=arm.model,
            data=data,
            output_dir=str(run_dir),
            preset="paper",
            epochs=preset.epochs,
            batch_size=preset.batch_size,
            image_size=preset.image_size,
            norm=preset.norm,
            pretrained=arm.pretrained,
            train_layers=arm.train_layers,
            clahe=arm.clahe,
            split_file=str(split_file),
            num_workers=num_workers,
            cache_dir=cache_dir,
            resume=resume,
            overwrite_output_dir=True,
            calibrate=False,  # the study reports raw probabilities and calibrates them itself
        )
    )
    return "resumed" if resume else "trained"


def run_study(
    data: str,
    output_dir: Path,
    models: Optional[Sequence[str]] = None,
    preset_name: str = "cpu-quick",
    clahe: bool = False,
    num_workers: int = 2,
    cache_dir: Optional[str] = None,
    bootstrap: int = 1000,
    cam_images_per_class: int = 2,
) -> Dict[str, object]:
    """Train every arm on one split and write the comparison report.

    Args:
        data: Kaggle-layout folder (or dataset id).
        output_dir: study folder: one sub-folder per run, ``split.json``, the report.
        models: ``--models`` (default: the preset's).
        preset_name: ``paper`` or ``cpu-quick``.
        clahe: also train each model with CLAHE preprocessing.
        num_workers: loader workers per run.
        cache_dir: resized-pixel cache.
        bootstrap: bootstrap resamples for the intervals.
        cam_images_per_class: test images per class in the Grad-CAM figure.

    Returns:
        The ``study.json`` dict.
    """
    from accelerate import PartialState  # accelerate loads only when a run starts
    from accelerate.utils import parse_flag_from_env

    if preset_name not in STUDY_PRESETS:
        raise CXRError(f"--preset must be one of {', '.join(STUDY_PRESETS)}, got {preset_name!r}")
    preset = STUDY_PRESETS[preset_name]
    arms = plan_study(models or preset.models, preset, clahe)
    # like AcceleratorState, honour ACCELERATE_USE_CPU (PartialState alone would ignore it and see one process)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    out = Path(output_dir)
    split_file = _shared_split(state, data, out)
    log: Dict[str, Dict[str, object]] = {}
    for i, arm in enumerate(arms, 1):
        t0 = time.time()
        if state.is_main_process:
            print(f"[study {i}/{len(arms)}] {arm.name}{' — ' + arm.note if arm.note else ''}", flush=True)
        status = _train_arm(arm, preset, data, out, split_file, num_workers, cache_dir)
        log[arm.name] = {"status": status, "seconds": round(time.time() - t0, 1)}
        if state.is_main_process:
            print(f"[study {i}/{len(arms)}] {arm.name}: {status} in {log[arm.name]['seconds']} s", flush=True)
    result: Dict[str, object] = {}
    if state.is_main_process:
        result = _analyse(data, out, split_file, arms, bootstrap)
        result = {"preset": preset_name, "preset_note": preset.note, "data": data, **result, "runs_log": log}
        write_study_report(out, result, cam_images_per_class=cam_images_per_class, data=data)
    state.wait_for_everyone()
    state.destroy_process_group()
    return result


def _shared_split(state, data: str, out: Path) -> Path:
    """The one split every run of the study trains and tests on (seed 1), written once by the main process;
    the data's layout errors surface here, before anything is written."""

    ds = load_radiographs(data)
    split_file = RunFolder(out).split
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if not split_file.is_file():
            save_split(split_file, stratified_split(ds["file_name"], ds["label"], seed=1), seed=1)
    state.wait_for_everyone()
    return split_file


def _analyse(data: str, out: Path, split_file: Path, arms: Sequence[StudyArm], bootstrap: int) -> Dict[str, object]:
    """The study's numbers from the runs' saved predictions (:func:`cxr.reproduction.analysis.analyse_study`)."""

    split = load_split(split_file)
    all_files = [n for part in SPLITS for n in split[part]]
    data_dir = Path(data) if Path(data).is_dir() else None
    analysis = analyse_study({a.name: out / a.name for a in arms}, data_dir, all_files, n_resamples=bootstrap)
    return {
        "split": {p: len(split[p]) for p in SPLITS},
        "arms": [dataclasses.asdict(a) for a in arms],
        "bootstrap_resamples": bootstrap,
        **analysis,
    }
