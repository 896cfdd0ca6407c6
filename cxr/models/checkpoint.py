"""Model folders in timm's Hub layout, and atomic training checkpoints for ``--resume``.

A model folder holds ``config.json`` + ``model.safetensors`` as ``timm.models.save_for_hf``
writes them, plus a ``"cxr"`` block in the config with the preprocessing (:class:`PreprocessConfig`)
and how the model was trained. It loads with ``timm.create_model("local-dir:DIR")`` (or
``hf-hub:ORG/NAME``), with transformers' ``AutoModelForImageClassification`` (after ``import cxr``
for the architectures cxr registers), and with :func:`load_model`.

Training checkpoints (``checkpoint.pt``) hold only tensors and plain Python values, are written
to a temporary file and renamed into place (a kill mid-save leaves the previous one intact), and
are read back with ``torch.load(..., weights_only=True)``.

Example:
    >>> model, prep, cfg = load_model("runs/resnet50/model")        # doctest: +SKIP
    >>> prep.image_size, prep.label_names[0]  # doctest: +SKIP
    (224, 'COVID')
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import timm
import torch
from timm.models import save_for_hf
from torch import nn

from cxr.data.preprocessing import PreprocessConfig
from cxr.errors import CXRError
from cxr.labels import Classes
from cxr.locations import is_hub_id
from cxr.run_folder import FORMAT_VERSION, MODEL_CONFIG_NAME, MODEL_WEIGHTS_NAME, check_format

__all__ = [
    "NON_PORTABLE_MODEL_TYPE",
    "save_model_dir",
    "recover_model_dir",
    "set_model_temperature",
    "set_model_operating_point",
    "load_model",
    "read_model_config",
    "save_training_state",
    "load_training_state",
    "capture_rng_state",
    "restore_rng_state",
]

_logger = logging.getLogger(__name__)

WEIGHTS_NAME = MODEL_WEIGHTS_NAME
#: ``config.json``'s ``model_type`` for models whose preprocessing only cxr applies (CLAHE): transformers
#: refuses to load them and names this type in its error.
NON_PORTABLE_MODEL_TYPE = "cxr-only (CLAHE preprocessing that transformers cannot apply; load with cxr.CXRClassifier)"
CONFIG_NAME = MODEL_CONFIG_NAME


def _atomic_swap_dir(tmp: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def recover_model_dir(directory: Union[str, os.PathLike]) -> bool:
    """Undo a save that was killed between its two renames (``.model.old`` kept, ``model/`` gone).

    Also removes temporary folders that killed saves left. Returns whether a folder was restored.
    """
    directory = Path(directory)
    for tmp in directory.parent.glob(f".{directory.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    old = directory.with_name(f".{directory.name}.old")
    if old.exists() and not directory.exists():
        os.replace(old, directory)
        return True
    return False


def save_model_dir(
    model: nn.Module,
    directory: Union[str, os.PathLike],
    preprocess: PreprocessConfig,
    info: Dict[str, Any],
    screening: Optional[Classes] = None,
) -> Path:
    """Write ``model`` in timm's Hub layout, atomically replacing ``directory``.

    Args:
        model: an unwrapped timm model.
        directory: the folder to (re)write.
        preprocess: its preprocessing; stored under ``config["cxr"]["preprocessing"]`` and as
            timm's ``pretrained_cfg`` mean/std/input size.
        info: JSON-ready facts stored under ``config["cxr"]`` (model name, pretrained source, ...).
        screening: the classes' negative and critical classes (``cxr.screening``; their names must be
            ``preprocess.label_names``).

    Returns:
        The folder.
    """
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    if not all(t.is_contiguous() for t in model.state_dict().values()):
        # safetensors stores contiguous tensors only (a channels-last model is not): save a packed copy
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    save_for_hf(
        model,
        str(tmp),
        model_config={
            "label_names": list(preprocess.label_names),
            "cxr": {
                "format_version": FORMAT_VERSION,
                **({"screening": screening.to_config()} if screening is not None else {}),
                "preprocessing": preprocess.to_dict(),
                "portability": preprocess.portability(),
                **info,
            },
        },
        data_config=preprocess.timm_data_config(),
        safe_serialization=True,
    )
    cfg_path = tmp / CONFIG_NAME
    cfg = json.loads(cfg_path.read_text())
    # transformers' TimmWrapperConfig rejects num_classes among model_args (it sets it itself)
    model_args = cfg.get("model_args") or {}
    model_args.pop("num_classes", None)
    if model_args:
        cfg["model_args"] = model_args
    else:
        cfg.pop("model_args", None)
    if not preprocess.portable:
        # transformers would load it and feed it the wrong input without a word: an explicit model type it
        # does not know stops AutoConfig/pipeline at load, with the reason in the message (timm ignores the key)
        cfg["model_type"] = NON_PORTABLE_MODEL_TYPE
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    _atomic_swap_dir(tmp, directory)
    return directory


def set_model_temperature(directory: Union[str, os.PathLike], temperature: float) -> None:
    """Save a softmax temperature in a model folder's ``config.json`` (``cxr.temperature``), atomically.

    :class:`cxr.CXRClassifier`, ``cxr.eval`` and the app divide the logits by it before the softmax.
    """
    _set_cxr_entry(directory, "temperature", float(temperature))


def set_model_operating_point(directory: Union[str, os.PathLike], operating_point: Dict[str, Any]) -> None:
    """Save the decision rule in a model folder's ``config.json`` (``cxr.operating_point``,
    :meth:`cxr.metrics.operating_point.OperatingPoint.to_config`), atomically."""
    _set_cxr_entry(directory, "operating_point", operating_point)


def _set_cxr_entry(directory: Union[str, os.PathLike], key: str, value: Any) -> None:
    path = Path(directory) / CONFIG_NAME
    cfg = json.loads(path.read_text())
    cfg.setdefault("cxr", {})[key] = value
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    os.replace(tmp, path)


def read_model_config(ref: Union[str, os.PathLike], revision: Optional[str] = None) -> Tuple[Dict[str, Any], str]:
    """Read a cxr model's ``config.json`` from a local folder or a Hub repository.

    Args:
        ref: a local model folder or a Hub repository id.
        revision: Hub branch, tag or commit (Hub ids only).

    Returns:
        ``(config, timm_name)`` where ``timm_name`` is ``local-dir:…`` or ``hf-hub:…``.

    Raises:
        CXRError: no such folder/repository, it is not a cxr checkpoint (names what is missing), or it is of
            another format (:func:`cxr.run_folder.check_format`).
    """
    path = Path(ref)
    if path.is_dir():
        cfg_file = path / CONFIG_NAME
        if not cfg_file.is_file():
            raise CXRError(f"{path} is not a model folder: no {CONFIG_NAME}")
        if not (path / WEIGHTS_NAME).is_file():
            raise CXRError(f"{path} has no {WEIGHTS_NAME} (cxr only loads safetensors weights)")
        timm_name = f"local-dir:{path}"
    else:
        ref_s = str(ref)
        if not is_hub_id(ref_s):
            raise CXRError(f"model folder not found: {ref}")
        cfg_file = Path(_hub_file(ref_s, CONFIG_NAME, revision))
        _hub_file(ref_s, WEIGHTS_NAME, revision)
        timm_name = f"hf-hub:{ref_s}" + (f"@{revision}" if revision else "")
    try:
        cfg = json.loads(Path(cfg_file).read_text())
    except json.JSONDecodeError as e:
        raise CXRError(f"{ref}: {CONFIG_NAME} is not valid JSON: {e}") from None
    cxr_block = cfg.get("cxr")
    if not isinstance(cxr_block, dict) or "preprocessing" not in cxr_block:
        raise CXRError(f"{ref} is not a cxr checkpoint: its {CONFIG_NAME} has no 'cxr.preprocessing' block")
    check_format(cxr_block.get("format_version"), f"the model {ref}")
    return cfg, timm_name


def _hub_file(repo_id: str, filename: str, revision: Optional[str]) -> str:
    from huggingface_hub import hf_hub_download  # the Hub client loads only for a Hub id
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return hf_hub_download(repo_id, filename, revision=revision)
    except RepositoryNotFoundError:
        raise CXRError(
            f"no model repository {repo_id!r} on the Hub (or it is private and no token allows it)"
        ) from None
    except RevisionNotFoundError:
        raise CXRError(f"{repo_id!r} has no revision {revision!r}") from None
    except LocalEntryNotFoundError as e:
        raise CXRError(
            f"cannot fetch {filename} of {repo_id!r}: offline or unreachable Hub, and not cached ({e})"
        ) from None
    except RemoteEntryNotFoundError:
        hint = " (cxr only loads safetensors weights)" if filename == WEIGHTS_NAME else ""
        raise CXRError(f"{repo_id!r} is not a cxr checkpoint: it has no {filename}{hint}") from None
    except Exception as e:  # connection errors and the like
        raise CXRError(f"cannot fetch {filename} of {repo_id!r} from the Hub: {type(e).__name__}: {e}") from None


def load_model(
    ref: Union[str, os.PathLike],
    revision: Optional[str] = None,
) -> Tuple[nn.Module, PreprocessConfig, Dict[str, Any]]:
    """Load a cxr model folder or Hub repository for inference.

    Args:
        ref: a local model folder or a Hub repository id.
        revision: Hub branch, tag or commit.

    Returns:
        ``(model in eval mode, its PreprocessConfig, the full config.json)``.

    Raises:
        CXRError: not a cxr checkpoint, no safetensors, or class names that are missing, disagree with the
            preprocessing's, or a screening question they cannot answer.
    """
    cfg, timm_name = read_model_config(ref, revision)
    prep = PreprocessConfig.from_dict(cfg["cxr"]["preprocessing"])
    labels = tuple(cfg.get("label_names") or ())
    if labels != prep.label_names:
        raise CXRError(
            f"{ref} is damaged: its label_names {list(labels)} differ from its preprocessing's {list(prep.label_names)}"
        )
    try:
        Classes.from_model_config(cfg)
    except CXRError as e:
        raise CXRError(f"{ref}: {e}") from None
    model = timm.create_model(timm_name, pretrained=True)
    model.eval()
    return model, prep, cfg


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_training_state(path: Union[str, os.PathLike], state: Dict[str, Any]) -> None:
    """Atomically write a training checkpoint (tensors and plain values only), stamped with the format."""
    path = Path(path)
    state = {**state, "format_version": FORMAT_VERSION}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def load_training_state(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_training_state`, with ``weights_only=True``: tensors and plain
    values only, never code.

    Raises:
        CXRError: the file is damaged, truncated, or holds anything else (it is not loaded), or it is of another
            format (:func:`cxr.run_folder.check_format`).
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch's own message would suggest loading it unsafely
        raise CXRError(
            f"--resume: {path} is not a training checkpoint cxr can read safely (damaged, truncated, or holding "
            f"more than tensors and plain values; {type(e).__name__}); it was not loaded. Start the run again "
            "with --overwrite-output-dir, or resume from another checkpoint."
        ) from None
    check_format(state.get("format_version") if isinstance(state, dict) else None, f"--resume: the checkpoint {path}")
    return state


def capture_rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as weights-only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
