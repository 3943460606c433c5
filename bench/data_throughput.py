"""Throughput of the training data loader that train.py builds (images/s), CIFAR-10-sized:
uint8 tensors in memory, a folder of PNG files, an LSUN-style lmdb of PNGs, and LitData chunks
(``data.name=streaming``, written by ``lscore prepare`` from the PNG folder).

    python bench/data_throughput.py --images 4096 --batch 128 --workers 0,2,4

Every batch is copied to the training device as Lightning copies it (``non_blocking=True``; from
page-locked memory on a GPU). The first epoch (worker start, files entering the page cache) is
timed apart from the next ``--epochs``. Prints one JSON object per (source, workers); the
streaming source also gives the one-off cost of writing its chunks (``prepare_seconds``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from common import Stopwatch, device_info
from PIL import Image

from lightning_score.config import DataConfig
from lightning_score.data import DATASETS
from lightning_score.data.base import ScoreDataModule
from lightning_score.data.prepare import Source, prepare
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


def write_lmdb(folder: Path, pngs: Path) -> None:
    """The PNGs as LSUN stores them: encoded bytes in ``bedroom_{train,val}_lmdb``."""
    import lmdb

    files = sorted(pngs.glob("*.png"))
    for split, chosen in (("train", files), ("val", files[:8])):
        env = lmdb.open(str(folder / f"bedroom_{split}_lmdb"), map_size=1 << 32)
        with env, env.begin(write=True) as txn:
            for path in chosen:
                txn.put(path.name.encode(), path.read_bytes())


def one_epoch(loader, device: torch.device, epoch: int) -> tuple[int, float]:
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):  # LitData's loader counts its epochs itself
        sampler.set_epoch(epoch)  # type: ignore[union-attr]
    watch = Stopwatch(device)
    watch.begin()
    images = sum(len(batch[0].to(device, non_blocking=True)) for batch in loader)
    return images, watch.end()


def measure(dm: ScoreDataModule, trainer: L.Trainer, epochs: int) -> dict[str, object]:
    dm.trainer = trainer
    dm.setup("fit")
    loader = dm.train_dataloader()
    device = trainer.strategy.root_device
    first_images, first_seconds = one_epoch(loader, device, 0)
    images, seconds = 0, 0.0
    for epoch in range(1, epochs + 1):
        n, t = one_epoch(loader, device, epoch)
        images, seconds = images + n, seconds + t
    return {
        "images_per_second": images / seconds,
        "first_epoch_images_per_second": first_images / first_seconds,
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
    p.add_argument("--sources", default="tensors,png,lmdb,streaming")
    args = p.parse_args(argv)

    trainer = L.Trainer(devices=1, logger=False, enable_progress_bar=False)
    device = trainer.strategy.root_device
    with tempfile.TemporaryDirectory() as tmp:
        folder, sources = Path(tmp) / "png", args.sources.split(",")
        folder.mkdir()
        write_pngs(folder, args.images)
        if "lmdb" in sources:
            write_lmdb(Path(tmp), folder)
        prepare_seconds = None
        if "streaming" in sources:
            start = time.perf_counter()
            source = Source("folder", str(folder), train=True, val_fraction=0.01)
            prepare(source, f"{tmp}/chunks", workers=2, progress=False)
            prepare_seconds = time.perf_counter() - start
        for source_name in sources:
            for workers in (int(w) for w in args.workers.split(",")):
                cfg = DataConfig(
                    name=SOURCE_DATA[source_name],
                    root=str(folder) if source_name == "png" else tmp,
                    input_dir=f"{tmp}/chunks",
                    image_size=32,
                    batch_size=args.batch,
                    num_workers=workers,
                    random_flip=True,
                    val_fraction=0.01,
                )
                if source_name == "tensors":
                    dm = tensor_source(cfg, args.images)
                else:
                    dm = DATASETS[cfg.name](cfg, 0)
                record = {
                    "benchmark": "data_throughput",
                    **device_info(device),
                    "source": source_name,
                    "num_workers": workers,
                    "batch": args.batch,
                    **measure(dm, trainer, args.epochs),
                }
                if source_name == "streaming":
                    record["prepare_seconds"] = prepare_seconds
                print(json.dumps(record), flush=True)


#: the data.name each source is read through
SOURCE_DATA = {"tensors": "folder", "png": "folder", "lmdb": "lsun", "streaming": "streaming"}


if __name__ == "__main__":
    main(sys.argv[1:])
