"""What makes a multi-day run on preemptible machines safe: checkpoint files that are whole or
absent, a save before a preempted process exits, and a guard that stops (or skips) a non-finite
update before it reaches the weights.

* :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin) writes a temporary file next to
  the target, fsyncs it and renames it into place; the file it replaces is kept as
  ``<name>-prev.ckpt`` if it still verifies and loads as a checkpoint of ours, else set aside as
  ``<name>.corrupt-<time>`` (never rotated over the good predecessor). Lightning's own
  ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives in the
  system temp directory: when that is another filesystem, the final move is a copy that a kill can
  leave half-written. Loading is always ``torch.load(weights_only=True)`` with verified checksums,
  whatever the caller asks for, and it never deletes a file.
* A writer holds an exclusive ``flock`` on its temporary file until the rename, so
  :func:`remove_orphaned_temp_files` can tell the leftovers of a killed writer (lock free) from a
  write under way in another process.
* :class:`RunCheckpoint` (a ``ModelCheckpoint``) also saves ``last`` at the final step and when
  Lightning's SIGTERM handling stops the run; :class:`SaveOnInterrupt` routes the first Ctrl-C
  (SIGINT) through the same path, so an interrupted run saves too (exit 130; 143 for SIGTERM).
* :class:`NonFiniteGuard` checks the loss and the gradients before every optimizer step, on the
  device: the host reads the outcome only at logging steps, checkpoint saves and validation.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, WeightAveraging
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from lightning_score.outputs import file_mode
from lightning_score.training.checkpoint import (
    CheckpointError,
    is_loadable_checkpoint,
    load_checkpoint,
)
from lightning_score.training.logging_callbacks import is_logging_step

#: the exit status of a run stopped by SIGTERM after saving (128 + 15, as if killed by it): job
#: schedulers that restart failed jobs must not mistake a preempted run for a finished one
PREEMPTED_EXIT_CODE = 143
#: the exit status of a run stopped by Ctrl-C (SIGINT) after saving (128 + 2)
INTERRUPTED_EXIT_CODE = 130


class NonFiniteError(FloatingPointError):
    """A non-finite loss, gradient or weight; the message says where and what to do."""


@dataclass
class StepState:
    """What one training step hands to the callbacks that watch it (the non-finite guard, the EMA).

    Device tensors only, so the hand-over costs no host-device sync. The module sets ``loss`` and
    ``t``; :class:`NonFiniteGuard` with ``policy="skip"`` sets ``skipped`` (1.0 when it dropped
    the update, else 0.0), so that the EMA drops that step too.
    """

    loss: Tensor
    t: Tensor
    skipped: Tensor | None = None


@runtime_checkable
class ReportsSteps(Protocol):
    """A LightningModule whose ``training_step`` sets ``step_state``."""

    step_state: StepState | None


def _nonfinite_entries(state: Mapping[str, Any]) -> list[str]:
    return [
        name
        for name, value in state.items()
        if isinstance(value, Tensor) and value.is_floating_point() and not value.isfinite().all()
    ]


#: temporary files of :class:`AtomicCheckpointIO`: ``.<target name>.<random>.tmp``
TEMP_PATTERN = ".*.ckpt.*.tmp"


def remove_orphaned_temp_files(directory: Path) -> list[Path]:
    """Delete the temporary checkpoint files in ``directory`` that no live writer holds locked
    (a kill during a write leaves one behind, as large as a checkpoint); return them."""
    removed = []
    for tmp in sorted(Path(directory).glob(TEMP_PATTERN)):
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a writer is at work on it
            os.close(fd)
            continue
        try:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
        finally:
            os.close(fd)
    return removed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _out_of_space(err: BaseException | None) -> bool:
    """Whether ``err`` or an exception it carries is ENOSPC (torch.save wraps the ``OSError`` of
    a failed write in a ``RuntimeError`` about the stream position)."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, Tensor):
        return obj.untyped_storage().nbytes()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _raise_if_out_of_space(err: BaseException, path: Path, checkpoint: Mapping[str, Any]) -> None:
    """Turn a full disk into one line naming the file and the space it needs (the temporary
    file is already removed; earlier checkpoints were never touched)."""
    if not _out_of_space(err):
        return
    free = shutil.disk_usage(path.parent).free
    need = _tensor_bytes(checkpoint)
    raise CheckpointError(
        f"no space left on the device to write {path}: the checkpoint needs about "
        f"{_size(need)} and {_size(free)} are free; earlier checkpoints are intact: free some "
        "space (or move out_dir) and rerun the same command to continue"
    ) from None


def _size(n: int) -> str:
    return f"{n / 2**10:.0f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


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
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as err:
            _raise_if_out_of_space(err, path, checkpoint)
            raise
        try:
            # Locked until renamed: the lock tells remove_orphaned_temp_files a writer is alive.
            with os.fdopen(fd, "wb") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
                os.chmod(tmp, file_mode())  # mkstemp makes it private; a checkpoint is not
                if path.exists():
                    # A file that does not verify or is not our checkpoint is kept aside, not
                    # rotated over the good predecessor.
                    keep = (
                        path.with_name(f"{path.stem}-prev{path.suffix}")
                        if is_loadable_checkpoint(path)
                        else path.with_name(f"{path.name}.corrupt-{time.time_ns()}")
                    )
                    os.replace(path, keep)
                os.replace(tmp, path)
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            _raise_if_out_of_space(err, path, checkpoint)
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
    A step's training rows reach the loggers before its checkpoint is written (see
    :func:`_log_step_rows_now`).
    """

    _at_batch_end = False
    _flushed_step = -1

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        self._at_batch_end = True
        try:
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
            if trainer.global_step >= trainer.max_steps > 0 and not (
                self._should_skip_saving_checkpoint(trainer)
            ):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            self._at_batch_end = False

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if self._at_batch_end and self._flushed_step != trainer.global_step:
            self._flushed_step = trainer.global_step
            _log_step_rows_now(trainer)
        super()._save_checkpoint(trainer, filepath)

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
        epoch_loop = trainer.fit_loop.epoch_loop
        if epoch_loop.batch_progress.current.completed >= trainer.num_training_batches:
            # Stopped between epochs: Lightning raises after closing an epoch, before the next
            # one resets its batch counters, and would restore the closed epoch's counts into
            # the new epoch (cutting it short). Save the state the next epoch starts from.
            epoch_loop.batch_progress.reset_on_run()
            epoch_loop.scheduler_progress.reset_on_run()
            epoch_loop.automatic_optimization.optim_progress.reset_on_run()
            epoch_loop.val_loop.batch_progress.total.reset()
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        interrupted = any(
            isinstance(c, SaveOnInterrupt) and c.received
            for c in trainer.callbacks  # type: ignore[attr-defined]
        )
        rank_zero_info(
            f"{'SIGINT' if interrupted else 'SIGTERM'}: saved {self.last_model_path} at step "
            f"{trainer.global_step}; rerun the same command to continue"
        )


def _log_step_rows_now(trainer: L.Trainer) -> None:
    """Hand this step's training metrics to the loggers now, before its checkpoint is written.

    Lightning logs them just after the checkpoint callback returns; a process killed inside the
    write would lose them for good, since the resumed run continues after this step. The call
    Lightning then makes is skipped once, so each row is logged once.
    """
    connector = trainer._logger_connector
    if "update_train_step_metrics" in vars(connector):
        return
    connector.update_train_step_metrics()

    def already_logged() -> None:
        del connector.update_train_step_metrics  # back to Lightning's method for the next step

    connector.update_train_step_metrics = already_logged  # type: ignore[method-assign]


class SaveOnInterrupt(Callback):
    """The first Ctrl-C (SIGINT) stops the run as SIGTERM does: at the end of the current batch,
    after :class:`RunCheckpoint` saved ``last``. Lightning's own Ctrl-C handling stops at once and
    saves nothing; a second Ctrl-C still gets it (the handler is removed after the first)."""

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers live in the main thread only

        def stop_after_batch(signum: int, frame: Any) -> None:
            self.received = True
            signal.signal(signal.SIGINT, self._previous)
            rank_zero_info("Ctrl-C: saving at the end of this batch (Ctrl-C again: stop at once)")
            # The flag Lightning's SIGTERM handler sets: the loops stop at the end of the batch
            # (all DDP ranks agree on it) and raise SIGTERMException.
            trainer._signal_connector.received_sigterm = True

        self._previous = signal.signal(signal.SIGINT, stop_after_batch)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous is not None and not self.received:
            signal.signal(signal.SIGINT, self._previous)
        self._previous = None


#: fields of the guard's device record of a non-finite step (step 0: none yet)
_RECORD = ("step", "loss", "t_min", "t_max", "loss_bad", "grad_bad")


class NonFiniteGuard(Callback):
    """Stops the run, or drops the update (``policy="skip"``), when the loss or a gradient is not
    finite, before that update can write NaN into the weights.

    The checks run on the device and the host does not wait for them. With an optimizer that has
    a fused kernel (``optim.fused``, the default), a bad step sets the optimizer's ``found_inf``
    flag (the one GradScaler uses), so the kernel leaves weights, moments and step count as they
    were. The host reads the outcome at logging steps, before every checkpoint save, at validation
    and at the end: ``stop`` raises then, naming the step where it happened (every update since was
    dropped, so no checkpoint ever holds them); ``skip`` counts and warns. Without a fused kernel
    the host reads the outcome every step (one sync) and drops a bad update by clearing the grads.

    Under DDP every rank takes the same decision. With ``16-mixed`` precision, infinite gradients
    are routine (the GradScaler skips those steps and lowers its scale) and only the loss is
    checked, on the host every step.
    """

    def __init__(self, policy: str = "stop") -> None:
        super().__init__()
        self.policy = policy
        self.skipped = 0  # dropped updates, as of the host's last read
        self._on_device = False
        self._record: Tensor | None = None
        self._skipped: Tensor | None = None  # dropped updates, on the device
        self._saved_step: int | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, ReportsSteps):
            raise TypeError(
                f"NonFiniteGuard needs a module whose training_step sets step_state "
                f"(a StepState); {type(pl_module).__name__} has none"
            )
        self._on_device = trainer.precision != "16-mixed" and all(
            opt.defaults.get("fused") for opt in trainer.optimizers
        )
        self._record = torch.zeros(len(_RECORD), device=pl_module.device)
        self._skipped = torch.full((), float(self.skipped), device=pl_module.device)

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        state = pl_module.step_state  # type: ignore[attr-defined]
        assert self._record is not None and self._skipped is not None and state is not None
        loss_bad = ~torch.isfinite(state.loss).all()
        grad_bad = torch.zeros_like(loss_bad)
        if trainer.precision != "16-mixed":
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            if grads:
                grad_bad = ~torch.isfinite(torch.nn.utils.get_total_norm(grads))
        bad = loss_bad | grad_bad
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            bad = _on_any_rank(bad)
        t_min, t_max = torch.aminmax(state.t.float())
        current = torch.stack(
            [
                torch.full_like(self._record[0], trainer.global_step + 1),
                state.loss.detach().float().reshape(()),
                t_min,
                t_max,
                loss_bad.float(),
                grad_bad.float(),
            ]
        )
        # skip: the latest bad step (named in the warning); stop: the first one
        take = bad if self.policy == "skip" else bad & (self._record[0] == 0)
        self._record = torch.where(take, current, self._record)
        if self.policy == "skip":
            drop = bad.float()
            self._skipped += drop
            state.skipped = drop
        else:  # once a step was bad, drop every update until the host stops the run
            drop = (self._record[0] != 0).float()
        if self._on_device:
            optimizer.found_inf = drop  # type: ignore[attr-defined]
        elif self._read(trainer) and self.policy == "skip":
            optimizer.zero_grad(
                set_to_none=True
            )  # no gradients: the optimizer step changes nothing

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if not is_logging_step(trainer):
            return
        if self.policy == "skip":
            pl_module.log("train/skipped_updates", self._skipped)  # type: ignore[arg-type]
        if self._on_device:
            self._read(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._read(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._read(trainer)

    def _read(self, trainer: L.Trainer) -> bool:
        """Read the device record (a host-device sync): raise for ``stop``; for ``skip``, warn
        about and count the updates dropped since the last read, and say whether there were any."""
        if self._record is None or self._skipped is None:
            return False
        *record, skipped = torch.cat([self._record, self._skipped[None]]).tolist()
        if self.policy == "stop":
            if record[0]:
                raise NonFiniteError(
                    f"{self._describe(trainer, record)}; lower optim.lr or check the data, or set "
                    "trainer.nonfinite=skip to drop such updates"
                )
            return False
        new = int(skipped) - self.skipped
        if new <= 0:
            return False
        self.skipped = int(skipped)
        since = f" ({new} updates skipped since the last report)" if new > 1 else ""
        rank_zero_warn(
            f"{self._describe(trainer, record)}; update skipped (trainer.nonfinite=skip){since}"
        )
        return True

    def _describe(self, trainer: L.Trainer, record: list[float]) -> str:
        step, loss, t_min, t_max, loss_bad, grad_bad = record
        if loss_bad:
            what = f"loss ({loss:g})"
        elif grad_bad:
            what = "gradient (finite loss)"
        else:
            what = "loss or gradient on another rank"
        later = (
            f" (noticed at step {trainer.global_step}; the updates in between were dropped)"
            if self.policy == "stop" and trainer.global_step > step
            else ""
        )
        ckpt_cb = trainer.checkpoint_callback
        path = getattr(ckpt_cb, "last_model_path", "") or trainer.ckpt_path
        last = f"{path} (step {self._saved_step})" if path else "none written yet"
        return (
            f"non-finite {what} at step {int(step)}, batch t in [{t_min:.4g}, {t_max:.4g}]"
            f"{later}; last good checkpoint: {last}"
        )

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._read(trainer)  # a checkpoint never holds the steps after a non-finite one
        self._saved_step = trainer.global_step

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._saved_step = checkpoint["global_step"]

    def state_dict(self) -> dict[str, int]:
        skipped = self.skipped if self._skipped is None else int(self._skipped.item())
        return {"skipped": skipped}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped = state_dict["skipped"]


def _on_any_rank(flag: Tensor) -> Tensor:
    """True on every rank when ``flag`` is true on any: an all-reduce queued on the device (no
    barrier, unlike Lightning's ``strategy.reduce``), so the host does not wait for it."""
    value = flag.float()
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return value > 0
