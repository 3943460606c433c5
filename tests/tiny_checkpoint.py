"""A real quickstart checkpoint in seconds: the quickstart config, a tiny UNet, two training steps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch

from lightning_score.experiment import load_config
from lightning_score.training.run import train

ROOT = Path(__file__).resolve().parents[1]


def tiny_quickstart_checkpoint(
    out_dir: Path, *overrides: str, callbacks: Sequence[L.Callback] = ()
) -> Path:
    """Train ``configs/quickstart.yaml`` for 2 steps with channels (8, 16); return last.ckpt."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared cores: two threads contend and run ~10x slower
    try:
        cfg = load_config(
            ROOT / "configs" / "quickstart.yaml",
            [
                f"out_dir={out_dir}",
                "trainer.max_steps=2",
                "trainer.val_check_interval=2",
                "trainer.limit_val_batches=1",
                "model.kwargs.channels=[8,16]",
                "checkpoint.every_n_steps=2",
                "sample_grid.every_n_steps=100000",
                "sample_grid.num=4",
                "sampling.steps=5",
                *overrides,
            ],
        )
        run_dir = train(cfg, callbacks)
    finally:
        torch.set_num_threads(threads)
    return run_dir / "checkpoints" / "last.ckpt"
