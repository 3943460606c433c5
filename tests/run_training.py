"""A tiny toy-2D training run for the reliability tests, also run as a subprocess (SIGKILL,
SIGTERM, 2-process DDP): ``python tests/run_training.py OUT_DIR [--hang-at N] [--record-batches]
[key=value ...]``.

``--hang-at N``: once N updates are done (and their checkpoint written), write ``OUT_DIR/hanging``
and wait, until SIGTERM (Lightning's handler then ends the run after that batch) or SIGKILL;
with ``--in-validation``, wait in the first validation batch after update N instead.
``--record-batches``: save the batches and times each rank trained on, and the checkpoint files
it wrote, to ``OUT_DIR/record_rank{R}.pt``.
``--record-ema``: save, per rank, the raw weights after every step, the power-EMA profiles at the
end, and the steps of the snapshots this rank wrote, to ``OUT_DIR/ema_rank{R}.pt``.
``--kill-in-write N``: SIGKILL the process in the middle of writing ``last.ckpt`` at step N
(half of it written to the temporary file), after the step-numbered checkpoint of step N.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_score.config import ExperimentConfig
from lightning_score.experiment import load_config
from lightning_score.training.ema import PowerEMA
from lightning_score.training.run import train

ROOT = Path(__file__).resolve().parents[1]

#: 320 points in batches of 64: 5 batches an epoch, so 12 steps cross two epoch boundaries.
TINY = [
    "trainer.max_steps=12",
    "checkpoint.every_n_steps=3",
    "checkpoint.keep_periodic=false",
    "data.num_points=320",
    "data.batch_size=64",
    "model.kwargs.hidden=32",
    "model.kwargs.depth=2",
    "trainer.val_check_interval=4",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "trainer.deterministic=true",
    "sample_grid.every_n_steps=100000",
    "sample_grid.num=16",
    "sampling.steps=5",
]


def run_two_process_ddp(out_dir: Path, *args: str) -> None:
    """This script in a subprocess as a 2-process DDP run on the CPU (gloo), one thread each."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    ddp = ["trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu"]
    proc = subprocess.run(
        [sys.executable, __file__, str(out_dir), *args, *ddp],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def tiny_config(out_dir: Path, *overrides: str) -> ExperimentConfig:
    return load_config(ROOT / "configs" / "toy2d.yaml", [f"out_dir={out_dir}", *TINY, *overrides])


class HangAt(L.Callback):
    def __init__(self, step: int, marker: Path, in_validation: bool) -> None:
        self.step, self.marker, self.in_validation = step, marker, in_validation

    def _hang(self, trainer: L.Trainer) -> None:
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text("hanging")
            while not trainer.received_sigterm:
                time.sleep(0.02)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if not self.in_validation:
            self._hang(trainer)

    def on_validation_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.in_validation:
            self._hang(trainer)


class RecordBatches(L.Callback):
    """Per rank: the batches and the t drawn for each step, and the checkpoint files it wrote."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.batches: list[torch.Tensor] = []
        self.times: list[torch.Tensor] = []
        self.writes: list[str] = []

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint

        def counted(checkpoint: dict, path: Any, **kwargs: Any) -> None:
            self.writes.append(Path(path).name)
            save(checkpoint, path, **kwargs)

        io.save_checkpoint = counted  # type: ignore[method-assign]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, out: Any, batch: Any, *args):
        self.batches.append(batch[0].detach().clone())
        self.times.append(pl_module.step_state.t.clone())

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        record = {
            "batches": torch.stack(self.batches),
            "times": torch.stack(self.times),
            "writes": self.writes,
        }
        torch.save(record, self.out_dir / f"record_rank{trainer.global_rank}.pt")


class RecordEMA(L.Callback):
    """Per rank: the trajectory the power EMAs average (the raw weights after each step), the
    profiles they end with, and which snapshots this rank wrote (to tell one writer from two)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.weights: list[dict[str, torch.Tensor]] = []
        self.written: list[int] = []

    def _ema(self, trainer: L.Trainer) -> PowerEMA:
        return next(c for c in trainer.callbacks if isinstance(c, PowerEMA))  # type: ignore[union-attr]

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        ema = self._ema(trainer)
        write = ema.write_snapshot

        def counted(step: int, module: Any) -> Any:
            self.written.append(step)
            return write(step, module)

        ema.write_snapshot = counted  # type: ignore[method-assign]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, out: Any, batch: Any, *args):
        # after the optimizer step and outside validation: the raw weights, not the average
        self.weights.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        ema = self._ema(trainer)
        record = {
            "weights": self.weights,
            "profiles": ema.profile_states(pl_module),
            "std_rel": ema.std_rel,
            "written": self.written,
        }
        torch.save(record, self.out_dir / f"ema_rank{trainer.global_rank}.pt")


class KillInWrite(L.Callback):
    """SIGKILLs the process half-way through writing ``last.ckpt`` at step ``step``, after the
    step-numbered checkpoint of that step was written (``checkpoint.keep_periodic=true``)."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.writes = 0

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        real_save = torch.save

        def save_then_die(obj: Any, fh: Any, *args: Any, **kwargs: Any) -> None:
            if isinstance(obj, dict) and obj.get("global_step") == self.step:
                self.writes += 1
                if self.writes == 2:
                    buffer = io.BytesIO()
                    real_save(obj, buffer)
                    fh.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    fh.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
            real_save(obj, fh, *args, **kwargs)

        torch.save = save_then_die  # this process ends inside it


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--hang-at", type=int)
    parser.add_argument("--in-validation", action="store_true")
    parser.add_argument("--record-batches", action="store_true")
    parser.add_argument("--record-ema", action="store_true")
    parser.add_argument("--kill-in-write", type=int)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    callbacks: list[L.Callback] = []
    if args.hang_at is not None:
        callbacks.append(HangAt(args.hang_at, args.out_dir / "hanging", args.in_validation))
    if args.record_batches:
        callbacks.append(RecordBatches(args.out_dir))
    if args.record_ema:
        callbacks.append(RecordEMA(args.out_dir))
    if args.kill_in_write is not None:
        callbacks.append(KillInWrite(args.kill_in_write))
    train(tiny_config(args.out_dir, *args.overrides), callbacks)


if __name__ == "__main__":
    main(sys.argv[1:])
