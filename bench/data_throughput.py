"""Throughput of the training data loader that train.py builds (images/s): ScoreDataModule's
resumable loader over CIFAR-10-sized uint8 tensors in memory, and over a folder of PNG files.

    python bench/data_throughput.py --images 4096 --batch 128 --workers 0,2,4

Every batch is copied to the training device as Lightning copies it (``non_blocking=True``; from
page-locked memory on a GPU). The first epoch warms up (worker start); the next ``--epochs`` are
timed. Prints one JSON object per (source, workers).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import lightning as L
import numpy as np
import torch
from common import Stopwatch, device_info
from PIL import Image

from lightning_score.config import DataConfig
from lightning_score.data import DATASETS
from lightning_score.data.base import ScoreDataModule
from lightning_score.data.tensor_sets import ImageTensorDataset


def tensor_source(cfg: DataConfig, n: int) -> ScoreDataModule:
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    data = ImageTensorDataset(images.to(torch.uint8), torch.zeros(n), 32, cfg.random_flip)
    return ScoreDataModule(cfg, (3, 32, 32), lambda: (data, data))


def write_pngs(folder: Path, n: int) -> None:
    """``n`` 32x32 RGB PNGs of smooth random images (PNG-compressible, like photographs)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((32, 32), Image.BILINEAR)
        image.save(folder / f"{i:06d}.png")


def measure(dm: ScoreDataModule, trainer: L.Trainer, epochs: int) -> dict[str, object]:
    dm.trainer = trainer
    dm.setup("fit")
    loader = dm.train_dataloader()
    device = trainer.strategy.root_device
    for batch in loader:  # warm-up epoch: workers start, files enter the page cache
        batch[0].to(device, non_blocking=True)
    watch = Stopwatch(device)
    watch.begin()
    images = 0
    for epoch in range(1, epochs + 1):
        loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        for batch in loader:
            images += len(batch[0].to(device, non_blocking=True))
    seconds = watch.end()
    return {
        "images_per_second": images / seconds,
        "images": images,
        "pin_memory": loader.pin_memory,
        "persistent_workers": loader.persistent_workers,
    }


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", default="0,2")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--sources", default="tensors,png")
    args = p.parse_args(argv)

    trainer = L.Trainer(devices=1, logger=False, enable_progress_bar=False)
    device = trainer.strategy.root_device
    with tempfile.TemporaryDirectory() as folder:
        if "png" in args.sources:
            write_pngs(Path(folder), args.images)
        for source in args.sources.split(","):
            for workers in (int(w) for w in args.workers.split(",")):
                cfg = DataConfig(
                    name="folder",
                    root=folder,
                    image_size=32,
                    batch_size=args.batch,
                    num_workers=workers,
                    random_flip=True,
                    val_fraction=0.01,
                )
                if source == "tensors":
                    dm = tensor_source(cfg, args.images)
                else:
                    dm = DATASETS["folder"](cfg, 0)
                record = {
                    "benchmark": "data_throughput",
                    **device_info(device),
                    "source": source,
                    "num_workers": workers,
                    "batch": args.batch,
                    **measure(dm, trainer, args.epochs),
                }
                print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
