"""A tiny image training run on LitData chunks (``data.name=streaming``), also run as a
subprocess (SIGKILL, 2-process DDP): ``python tests/run_streaming_training.py OUT_DIR CHUNKS
[--hang-at N] [--record-batches] [key=value ...]``; the options are those of run_training.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
from run_training import HangAt, RecordBatches

from lightning_score.config import ExperimentConfig
from lightning_score.experiment import load_config
from lightning_score.training.run import train

ROOT = Path(__file__).resolve().parents[1]

#: 72 training images of 8x8 in batches of 16: 4 batches an epoch (per rank, also under 2-process
#: DDP at 8 a rank), so 10 steps cross two epoch boundaries
TINY = [
    "data.name=streaming",
    "data.image_size=8",
    "data.batch_size=16",
    "data.random_flip=true",
    "model.kwargs.channels=[8,16]",
    "trainer.max_steps=10",
    "checkpoint.every_n_steps=3",
    "checkpoint.keep_periodic=false",
    "trainer.val_check_interval=100",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "trainer.deterministic=true",
    "sample_grid.every_n_steps=100000",
    "evaluation.every_n_steps=0",
]


def streaming_config(out_dir: Path, chunks: Path, *overrides: str) -> ExperimentConfig:
    return load_config(
        ROOT / "configs" / "quickstart.yaml",
        [f"out_dir={out_dir}", f"data.input_dir={chunks}", *TINY, *overrides],
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("chunks", type=Path)
    parser.add_argument("--hang-at", type=int)
    parser.add_argument("--record-batches", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    callbacks: list[L.Callback] = []
    if args.hang_at is not None:
        callbacks.append(HangAt(args.hang_at, args.out_dir / "hanging", in_validation=False))
    if args.record_batches:
        callbacks.append(RecordBatches(args.out_dir))
    train(streaming_config(args.out_dir, args.chunks, *args.overrides), callbacks)


if __name__ == "__main__":
    main(sys.argv[1:])
