"""The first stage of a training run: the accelerator, this process's CPU threads, the batch split over
processes and accumulation steps, and the Hub push target checked before any work."""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
from typing import Any, Dict, List, Optional

import torch

from cxr.errors import CXRError
from cxr.run_folder import RunFolder
from cxr.training.config import Recipe

__all__ = ["Launch", "launch", "set_cpu_threads", "check_push_target_on_main", "clear_earlier_run", "versions"]

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Launch:
    """Where a run trains: its recipe (with ``channels_last`` settled for the device), the accelerator, the run
    folder and the images each process loads per micro-step."""

    cfg: Recipe
    accelerator: Any
    folder: RunFolder
    micro_batch: int


def launch(cfg: Recipe) -> Launch:
    """Start the accelerator for a resolved ``cfg``; writes nothing.

    Raises:
        CXRError: ``--batch-size`` does not split over processes x accumulation steps; the push target is refused.
    """
    from accelerate import Accelerator, DataLoaderConfiguration  # accelerate loads only when a run starts

    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_dir=str(cfg.output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    if accelerator.device.type == "cpu":
        set_cpu_threads(cfg.cpu_threads, accelerator.num_processes)
    if cfg.channels_last is None:  # measured: faster on CPU, several times slower for EfficientNet-Lite0 on CUDA
        cfg = dataclasses.replace(cfg, channels_last=accelerator.device.type == "cpu")
    world = accelerator.num_processes * cfg.gradient_accumulation_steps
    if cfg.batch_size % world:
        raise CXRError(
            f"--batch-size {cfg.batch_size} must be divisible by processes x accumulation steps "
            f"({accelerator.num_processes} x {cfg.gradient_accumulation_steps})"
        )
    if cfg.push_to_hub:
        check_push_target_on_main(accelerator, cfg.hub_model_id, cfg.hub_private)
    return Launch(cfg, accelerator, RunFolder(cfg.output_dir), cfg.batch_size // world)


def set_cpu_threads(requested: Optional[int], num_processes: int) -> int:
    """Give torch ``requested`` threads; else ``OMP_NUM_THREADS`` where it is set above 1; else the usable cores
    shared among this machine's training processes — ``accelerate launch`` without a CPU config sets
    ``OMP_NUM_THREADS=1``, which would leave all but one core idle."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if requested is None and env.isdigit() and int(env) > 1:
        requested = int(env)
    if requested is None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        requested = max(1, cores // max(local, 1))
    torch.set_num_threads(requested)
    return requested


def check_push_target_on_main(state: Any, repo_id: Optional[str], private: bool) -> None:
    """Check token and repository on the main process before training; every process stops if it fails."""
    from accelerate.utils import broadcast_object_list  # accelerate loads only when a run starts

    from cxr.publishing.publish import check_push_target  # the Hub client loads only for a run that publishes

    message: List[Optional[str]] = [None]
    if state.is_main_process:
        try:
            check_push_target(repo_id, private=private)
        except CXRError as e:
            message[0] = str(e)
    if state.num_processes > 1:
        broadcast_object_list(message)
    if message[0]:
        raise CXRError(message[0])


def clear_earlier_run(state: Any, folder: RunFolder) -> None:
    """``--overwrite-output-dir``: the earlier run's files go before this run writes any (main process)."""
    if state.is_main_process and folder.files():
        removed = folder.clear()
        _logger.warning("--overwrite-output-dir: removed the earlier run's %s", ", ".join(p.name for p in removed))
    state.wait_for_everyone()


def versions() -> Dict[str, str]:
    """The versions of what trained the model, for ``run_config.json``."""
    import accelerate  # imported here only to read their versions
    import datasets
    import timm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
    }
