"""What a training run shows: progress in optimizer steps with an ETA for the whole run, and a
short summary at the end (steps, time, final losses and metrics, where the files are).

Lightning's own bar counts batches per epoch ("Epoch 59: 25/25"), which says nothing about a run
defined by ``trainer.max_steps``. :class:`StepProgressBar` reads ``step 250/1500`` instead; on a
terminal it is a tqdm bar, in a log file one line every ``LOG_INTERVAL_S`` seconds (see
:mod:`lightning_score.progress`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from lightning_score.config import ExperimentConfig
from lightning_score.progress import LogLines, is_terminal
from lightning_score.sampling.cost import format_duration
from lightning_score.training.logging_callbacks import LossProgressBar

STEP_BAR_FORMAT = "{desc} {n_fmt}/{total_fmt} |{bar}| {percentage:3.0f}% [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
STEP_LINE_FORMAT = (
    "{desc} {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)


class StepProgressBar(LossProgressBar):
    """One bar for the whole run: ``step n / max_steps``, steps per second and the time left (the
    average over the run so far, validation and sample grids included); a resumed run counts on
    from its step. The loss shown is read at logging steps only (:class:`LossProgressBar`).
    Writes to stdout like Lightning's bar; ``terminal=None`` asks stdout whether it is one."""

    def __init__(self, refresh_rate: int = 10, terminal: bool | None = None) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._terminal = terminal
        self.first_step = 0  # where this run started (a resumed run: its checkpoint's step)

    @property
    def terminal(self) -> bool:
        return is_terminal(sys.stdout) if self._terminal is None else self._terminal

    def init_train_tqdm(self) -> Any:
        common = {
            "desc": "step",
            "total": self.trainer.max_steps,
            "unit": "step",
            "smoothing": 0,
            "file": sys.stdout,
        }
        if self.terminal:
            return Tqdm(
                position=2 * self.process_position,
                disable=self.is_disabled,
                leave=True,
                dynamic_ncols=True,
                bar_format=STEP_BAR_FORMAT,
                **common,
            )
        return LogLines(
            disable=self.is_disabled,
            bar_format=STEP_LINE_FORMAT,
            **common,
        )

    def init_validation_tqdm(self) -> Tqdm:
        if not self.terminal:  # a few seconds each: not worth lines in a log
            return Tqdm(disable=True)
        return super().init_validation_tqdm()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)
        self.first_step = trainer.global_step
        bar.initial = bar.n = trainer.global_step  # the rate and ETA count this run's steps

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        """One bar for all epochs: nothing to reset."""

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if not bar.disable and self._should_update(step, trainer.max_steps):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # redraws


def start_banner(cfg: ExperimentConfig, first_step: int, parameters: int) -> str:
    """The lines printed before anything slow starts: where the run goes, on what, for how many
    steps, and why reference statistics (if due) come before the first step."""
    t = cfg.trainer
    device = t.accelerator
    if device == "auto":
        import torch

        device = "gpu" if torch.cuda.is_available() else "cpu"
    count = "" if t.devices in ("auto", 1, "1") else f" x {t.devices}"
    nodes = f" x {t.num_nodes} nodes" if t.num_nodes > 1 else ""
    size = f"{parameters / 1e6:.1f} M" if parameters >= 1e6 else f"{parameters / 1e3:.1f} K"
    start = f", continuing from step {first_step}" if first_step else ""
    lines = [
        f"run {cfg.name}: {t.max_steps} steps{start} on {device}{count}{nodes}, "
        f"{cfg.model.name} with {size} parameters -> {cfg.run_dir}"
    ]
    ev = cfg.evaluation
    if 0 < ev.every_n_steps <= t.max_steps and not ev.stats:
        images = f"{ev.reference_num} training images" if ev.reference_num else "the training set"
        lines.append(
            f"  first: reference statistics of {images} for {', '.join(ev.metrics)} every "
            f"{ev.every_n_steps} steps (once; cached for later runs)"
        )
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def run_summary(
    cfg: ExperimentConfig,
    metrics: Mapping[str, Any],
    first_step: int,
    last_step: int,
    seconds: float,
) -> str:
    """The lines printed when training ends: what was done, the final numbers, where things are."""
    run_dir = cfg.run_dir
    steps = last_step - first_step
    rate = f", {steps / seconds:.2f} steps/s" if steps and seconds > 0 else ""
    resumed = f" (resumed at {first_step})" if first_step else ""
    lines = [
        f"done: step {last_step}/{cfg.trainer.max_steps}{resumed}, {steps} steps in "
        f"{format_duration(seconds)}{rate}; run directory {run_dir}"
    ]
    shown = {
        k: float(v)
        for k, v in metrics.items()
        if not k.startswith(("val_loss_t/", "lr-", "train/samples_per_s"))
    }
    if shown:
        lines.append("  final: " + ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(shown.items())))

    def newest(folder: Path, pattern: str) -> Path | None:
        files = sorted(folder.glob(pattern))
        return files[-1] if files else None

    places = {
        "checkpoint": run_dir / "checkpoints" / "last.ckpt",
        "samples": newest(run_dir / "samples", "samples_step*.png"),
        "loss curve": run_dir / "loss.png",
        "loss per t": run_dir / "per_t_loss.png",
        "metrics": newest(run_dir / "eval", "eval_step*.json"),
        "logs": run_dir / "logs",
    }
    for name, path in places.items():
        if path is not None and path.exists():
            lines.append(f"  {name + ':':12s}{path}")
    ckpt = places["checkpoint"]
    if ckpt.exists():
        lines.append(f"  next:       lscore sample {ckpt} --out {run_dir / 'sampled'}")
    return "\n".join(lines)
