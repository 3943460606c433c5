"""What makes a multi-day run on preemptible machines safe: checkpoint files that are whole or
absent, a save before a preempted process exits, and a guard that stops (or skips) a non-finite
update before it reaches the weights.

* :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin) writes a temporary file next to
  the target, fsyncs it and renames it into place; the file it replaces is kept as
  ``<name>-prev.ckpt``. Lightning's own ``TorchCheckpointIO`` writes through an fsspec
  transaction whose temporary file lives in the system temp directory: when that is another
  filesystem, the final move is a copy that a kill can leave half-written. Loading is always
  ``torch.load(weights_only=True)``, whatever the caller asks for, and it never deletes a file.
* :class:`RunCheckpoint` (a ``ModelCheckpoint``) also saves ``last`` at the final step and when
  Lightning's SIGTERM handling stops the run.
* :class:`NonFiniteGuard` checks the loss and the gradients before every optimizer step.
"""

from __future__ import annotations

import os
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, WeightAveraging
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from lightning_score.checkpoint import load_checkpoint

#: the exit status of a run stopped by SIGTERM after saving (128 + 15, as if killed by it): job
#: schedulers that restart failed jobs must not mistake a preempted run for a finished one
PREEMPTED_EXIT_CODE = 143


class NonFiniteError(FloatingPointError):
    """A non-finite loss, gradient or weight; the message says where and what to do."""


def _nonfinite_entries(state: Mapping[str, Any]) -> list[str]:
    return [
        name
        for name, value in state.items()
        if isinstance(value, Tensor) and value.is_floating_point() and not value.isfinite().all()
    ]


def _is_complete(path: Path) -> bool:
    """Whether a checkpoint file still has its zip directory (which truncation cuts off first)."""
    try:
        with zipfile.ZipFile(path):
            return True
    except (zipfile.BadZipFile, OSError):
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Whole-or-absent checkpoint files that keep their predecessor; weights-only loading."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        for key in ("state_dict", "current_model_state"):
            bad = _nonfinite_entries(checkpoint.get(key, {}))
            if bad:
                raise NonFiniteError(
                    f"refusing to write {path}: non-finite weights in {key} ({', '.join(bad[:3])}) "
                    f"at step {checkpoint.get('global_step')}"
                )
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)  # remote: fsspec's way
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a checkpoint is not
            if path.exists():
                # A file that lost its end is kept aside, not rotated over the good predecessor.
                keep = (
                    path.with_name(f"{path.stem}-prev{path.suffix}")
                    if _is_complete(path)
                    else path.with_name(f"{path.name}.corrupt-{time.time_ns()}")
                )
                os.replace(path, keep)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def load_checkpoint(
        self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Weights-only, always: a checkpoint must not be able to run code when loaded."""
        if not _is_local_file_protocol(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return load_checkpoint(path, map_location if map_location is not None else "cpu")

    def remove_checkpoint(self, path: _PATH) -> None:
        """Never delete: which checkpoints to keep is the user's decision, not a callback's."""


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also saves ``last`` at the final step and on SIGTERM.

    Lightning turns SIGTERM into ``SIGTERMException`` at the end of the current batch (under DDP
    all ranks agree on it); :meth:`on_exception` then saves, so a preempted run loses at most one
    batch. Any other exception (a non-finite loss, a crash) saves nothing: the state may be bad.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if trainer.global_step >= trainer.max_steps > 0 and not self._should_skip_saving_checkpoint(
            trainer
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        if trainer.validating:
            # Stopped between validation batches: the EMA weights are swapped into the model.
            # Swap them back (the averaging callback's own end-of-validation step), or the
            # checkpoint would store raw and EMA weights the wrong way round.
            for callback in trainer.callbacks:  # type: ignore[attr-defined]
                if isinstance(callback, WeightAveraging):
                    callback.on_validation_epoch_end(trainer, pl_module)
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        rank_zero_info(
            f"SIGTERM: saved {self.last_model_path} at step {trainer.global_step}; "
            "rerun the same command to continue"
        )


class NonFiniteGuard(Callback):
    """Stops the run, or drops the update (``policy="skip"``), when the loss or a gradient is
    not finite, before the optimizer step can write NaN into the weights.

    Under DDP every rank takes the same decision. With ``16-mixed`` precision, infinite
    gradients are routine (the GradScaler skips those steps and lowers its scale) and only the
    loss is checked.
    """

    def __init__(self, policy: str = "stop") -> None:
        super().__init__()
        self.policy = policy
        self.skipped = 0
        self._loss: Tensor | None = None
        self._saved_step: int | None = None

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor
    ) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        loss_ok = self._loss is None or bool(self._loss.isfinite().all())
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        grads_ok = (
            trainer.precision == "16-mixed"
            or not grads
            or bool(torch.nn.utils.get_total_norm(grads).isfinite())
        )
        if not trainer.strategy.reduce_boolean_decision(not (loss_ok and grads_ok), all=False):
            return
        message = self._describe(trainer, pl_module, loss_ok, grads_ok)
        if self.policy == "stop":
            raise NonFiniteError(
                f"{message}; lower optim.lr or check the data, or set trainer.nonfinite=skip "
                "to drop such updates"
            )
        optimizer.zero_grad(set_to_none=True)  # no gradients: the optimizer step changes nothing
        self.skipped += 1
        rank_zero_warn(f"{message}; update skipped (trainer.nonfinite=skip)")

    def _describe(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss_ok: bool, grads_ok: bool
    ) -> str:
        if not loss_ok:
            what = f"loss ({self._loss.item():g})"  # type: ignore[union-attr]
        elif not grads_ok:
            what = "gradient (finite loss)"
        else:
            what = "loss or gradient on another rank"
        t = getattr(pl_module, "last_batch_t", None)
        where = f", batch t in [{t.min():.4g}, {t.max():.4g}]" if t is not None else ""
        ckpt_cb = trainer.checkpoint_callback
        path = getattr(ckpt_cb, "last_model_path", "") or trainer.ckpt_path
        last = f"{path} (step {self._saved_step})" if path else "none written yet"
        return f"non-finite {what} at step {trainer.global_step + 1}{where}; last good checkpoint: {last}"

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if self.policy == "skip":
            pl_module.log("train/skipped_updates", float(self.skipped))

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._saved_step = trainer.global_step

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._saved_step = checkpoint["global_step"]

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped = state_dict["skipped"]
