"""Logging callbacks beside the metrics ScoreModule logs itself: training throughput, the per-t
validation loss plot and the progress bar. They work with every logger (CSV, TensorBoard, W&B);
images go to the loggers that take images. None of them reads a device value outside logging
steps: a read makes the host wait for the GPU to finish all queued work."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from lightning_score.config import ExperimentConfig
from lightning_score.plots import (
    Bins,
    Curve,
    binned_losses,
    bins_as_rows,
    plot_loss_curve,
    plot_per_t_loss,
)


def is_logging_step(trainer: L.Trainer) -> bool:
    """Whether Lightning writes this step's logged values to the loggers, asked after the update
    (``on_train_batch_end``); values logged in other steps are overwritten unread."""
    n = trainer.log_every_n_steps
    return n > 0 and trainer.global_step % n == 0


def log_image_file(trainer: L.Trainer, key: str, path: Path, step: int) -> None:
    """Send a PNG on disk to the image-capable loggers (W&B, TensorBoard); CSV keeps the file."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            from PIL import Image

            image = np.asarray(Image.open(path).convert("RGB"))
            logger.experiment.add_image(key, image, step, dataformats="HWC")


class SamplesPerSecond(L.Callback):
    """``train/samples_per_s``: training examples per second over all ranks, averaged over the last
    ``window`` steps (a window, not one step, so asynchronous GPU work is counted where it ends).
    Validation, sample grids and evaluation in between are not training time and are left out.
    Logged at logging steps only: ``self.log`` costs about half a millisecond of host time."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self._steps: deque[tuple[float, int]] = deque(maxlen=max(window, 1))
        self._last: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, *_: Any) -> None:
        if self._last is None:
            self._last = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        now = time.perf_counter()
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        self._steps.append((now - (self._last or now), len(x)))
        self._last = now
        seconds = sum(s for s, _ in self._steps)
        if seconds > 0 and is_logging_step(trainer):
            rate = sum(n for _, n in self._steps) * trainer.world_size / seconds
            # A CPU tensor: Lightning would copy a Python float to the GPU, which waits for it.
            pl_module.log("train/samples_per_s", torch.tensor(rate), on_step=True, on_epoch=False)

    def on_validation_start(self, trainer: L.Trainer, *_: Any) -> None:
        self._last = None


class LossProgressBar(TQDMProgressBar):
    """TQDM bar that shows ``train/loss`` read once per logging interval (a host-device sync
    then) instead of every step, as Lightning does for metrics logged with ``prog_bar=True``."""

    def __init__(self, refresh_rate: int = 10) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._loss: str | None = None
        self._read_at = 0  # the first read at the first logging interval

    def get_metrics(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the logger's version: the run directory names the run
        step = trainer.global_step
        if 0 < trainer.log_every_n_steps <= step - self._read_at:
            loss = trainer.callback_metrics.get("train/loss")
            if loss is not None:
                self._loss, self._read_at = f"{float(loss):.4g}", step
        if self._loss is not None:
            items["loss"] = self._loss
        return items


class PerTimeLossPlot(L.Callback):
    """After each validation, draw the per-t validation losses of all validations so far into
    ``path`` (overwritten) and send it, plus a table of this validation's bins, to the loggers."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.history: dict[int, Bins] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}  # a resumed run keeps the earlier lines

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {
            int(k): [(lo, hi, loss) for lo, hi, loss in v] for k, v in state_dict["history"].items()
        }

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        bins = binned_losses(trainer.callback_metrics)
        if not bins or not trainer.is_global_zero:
            return
        step = trainer.global_step
        self.history[step] = bins
        plot_per_t_loss(self.history, self.path)
        log_image_file(trainer, "val/loss_per_t_plot", self.path, step)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                rows = bins_as_rows(step, bins)
                data = [list(r.values()) for r in rows]
                logger.log_table(key="val/loss_per_t", columns=list(rows[0]), data=data, step=step)


class LossCurvePlot(L.Callback):
    """``loss.png``: training loss at logging steps and validation loss against the step, drawn
    after each validation and at the end (overwritten) and sent to the image loggers. The points
    are kept in the checkpoint, so a resumed run draws the whole run; the training loss is read
    at logging steps only, when the loggers read it anyway."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.train: Curve = []
        self.val: Curve = []

    def state_dict(self) -> dict[str, Any]:
        return {"train": self.train, "val": self.val}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train = [(int(s), float(v)) for s, v in state_dict["train"]]
        self.val = [(int(s), float(v)) for s, v in state_dict["val"]]

    def on_train_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None and trainer.is_global_zero and is_logging_step(trainer):
            self.train.append((trainer.global_step, float(loss)))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        if trainer.sanity_checking or loss is None or not trainer.is_global_zero:
            return
        self.val.append((trainer.global_step, float(loss)))
        self._draw(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and (self.train or self.val):
            self._draw(trainer)

    def _draw(self, trainer: L.Trainer) -> None:
        plot_loss_curve(self.train, self.val, self.path)
        log_image_file(trainer, "train/loss_plot", self.path, trainer.global_step)


def logging_callbacks(cfg: ExperimentConfig) -> list[L.Callback]:
    """The callbacks of this module for a run of ``cfg``."""
    return [
        SamplesPerSecond(window=cfg.trainer.log_every_n_steps),
        PerTimeLossPlot(cfg.run_dir / "per_t_loss.png"),
        LossCurvePlot(cfg.run_dir / "loss.png"),
    ]  # the progress bar (train_progress.StepProgressBar, a LossProgressBar) is train.py's
