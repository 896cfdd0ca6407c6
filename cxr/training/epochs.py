"""One epoch of training and its validation, each taking what it uses (as timm's ``train_one_epoch`` and
``validate``), and :class:`Progress`, the record of the epochs done that each epoch returns anew."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from cxr.allocator import release_before_workers
from cxr.data.dataset import ModelInput
from cxr.errors import CXRError
from cxr.labels import Classes
from cxr.metrics import compute_metrics, selection_key
from cxr.metrics.stats import negative_log_likelihood
from cxr.training.evaluation import predict

__all__ = ["Progress", "train_step", "train_one_epoch", "validate", "epoch_record", "split_metrics", "DIVERGED_LOSS"]

#: A cross-entropy above this (logits a thousand apart on the wrong class) means the run has diverged.
DIVERGED_LOSS = 1e3


@dataclasses.dataclass(frozen=True)
class Progress:
    """The epochs done: each one's record, the best on validation, and the one whose model is in ``model/``."""

    history: Tuple[Dict[str, Any], ...] = ()
    best: Optional[Dict[str, Any]] = None
    kept_at: Optional[Dict[str, Any]] = None

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def after(self, record: Dict[str, Any], val: Dict[str, Any], keep: str, epochs: int) -> "Progress":
        """The progress once the epoch of ``record`` (validated as ``val``) is done, under ``--keep keep``."""
        epoch = record["epoch"]
        improved = self.best is None or selection_key(val) > tuple(self.best["key"])
        best = {"epoch": epoch, "key": list(selection_key(val)), "validation": val} if improved else self.best
        keep_now = improved if keep == "best" else epoch == epochs
        kept_at = {"epoch": epoch, "validation": val} if keep_now else self.kept_at
        return Progress((*self.history, record), best, kept_at)

    def keeps(self, epoch: int) -> bool:
        """Whether ``epoch``'s model is the one kept."""
        return self.kept_at is not None and self.kept_at["epoch"] == epoch


def split_metrics(labels: np.ndarray, probs: np.ndarray, classes: Classes) -> Dict[str, Any]:
    """:func:`cxr.metrics.compute_metrics` of one part, with its mean negative log-likelihood as ``loss``."""
    m = compute_metrics(labels, probs, classes)
    m["loss"] = negative_log_likelihood(labels, probs)
    return m


def train_step(
    model,
    batch,
    loss_fn,
    optimizer,
    scheduler,
    accelerator,
    to_input: ModelInput,
    clip_grad_norm: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
):
    """One optimisation (micro-)step under Accelerate: the batch's model input (``to_input``: [augmented with
    draws from ``generator``,] normalised, on the device), forward, backward, [clip,] step, zero the gradients.

    Returns:
        ``(loss, logits)`` of the micro-batch.

    Raises:
        CXRError: the loss is not finite (the run diverged; nothing of this epoch is kept).
    """
    x = to_input(batch["pixels"], generator)
    with accelerator.accumulate(model):
        with accelerator.autocast():
            logits = model(x)
            loss = loss_fn(logits.float(), batch["labels"])
        if not torch.isfinite(loss) or loss.item() > DIVERGED_LOSS:
            raise CXRError(
                f"the training loss became {loss.item():.4g} (diverged): lower --lr, add --clip-grad-norm or "
                "--warmup-epochs; no model is kept from this epoch on"
            )
        accelerator.backward(loss)
        if clip_grad_norm is not None and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        if accelerator.sync_gradients:
            scheduler.step()
        optimizer.zero_grad()
    return loss, logits


def train_one_epoch(
    model,
    loader,
    loss_fn,
    optimizer,
    scheduler,
    accelerator,
    to_input: ModelInput,
    *,
    desc: str,
    ema: Any = None,
    ema_step: int = 0,
    clip_grad_norm: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, float]:
    """One pass over ``loader`` (the model in training mode already), each batch made the model's input by
    ``to_input`` (drawing from ``generator`` when it augments); the EMA, if any, is updated after each optimiser
    step, counting on from ``ema_step``. Returns the summed (loss, correct, count) over every process and the
    seconds it took."""
    t0 = time.time()
    totals = torch.zeros(3, device=accelerator.device)  # loss sum, correct, count
    release_before_workers(loader)  # the workers forked next share no free heap to be copied as it is reused
    bar = tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process)
    for batch in bar:
        loss, logits = train_step(
            model, batch, loss_fn, optimizer, scheduler, accelerator, to_input, clip_grad_norm, generator
        )
        if ema is not None and accelerator.sync_gradients:
            ema_step += 1
            ema.update(accelerator.unwrap_model(model), step=ema_step)
        n = batch["labels"].numel()
        correct = (logits.argmax(-1) == batch["labels"]).sum().float()
        totals += torch.stack([loss.detach().float() * n, correct, torch.tensor(float(n), device=accelerator.device)])
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return accelerator.reduce(totals, reduction="sum"), time.time() - t0


def validate(model, loader, accelerator, classes: Classes, to_input: ModelInput) -> Dict[str, Any]:
    """The metrics of ``model`` on the validation ``loader`` (:func:`split_metrics`), gathered over processes."""
    _, labels, probs = predict(model, loader, accelerator, to_input, desc="validation")
    return split_metrics(labels, probs, classes)


def epoch_record(epoch: int, totals: torch.Tensor, val: Dict[str, Any], lr: float, seconds: float) -> Dict[str, Any]:
    """The ``history.json`` entry of ``epoch`` (1-based)."""
    return {
        "epoch": epoch,
        "train_loss": float(totals[0] / totals[2]),
        "train_accuracy": float(totals[1] / totals[2]),
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "val_critical_to_normal": int(val["critical_to_normal"]),
        "lr": lr,
        "seconds": round(seconds, 2),
    }
