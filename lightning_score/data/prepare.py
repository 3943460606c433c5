"""Write a data set as LitData chunks of uint8 images and labels, for ``data.name=streaming``.

Each split goes to ``OUT/train`` and ``OUT/val`` (a folder or a bucket URI) through
``litdata.optimize``, which spreads the images over worker processes, shows a progress bar with
count and ETA, and with ``use_checkpoint`` records what each worker has written: a prepare that
was killed, run again, carries on from there. A split whose ``index.json`` exists is complete and
kept.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lightning_score.data.base import split_fraction
from lightning_score.data.image_sets import (
    ImageFolderFlat,
    UnreadableImageError,
    celeba,
    cifar10,
    lsun,
)
from lightning_score.data.streaming import is_remote, split_uri
from lightning_score.data.tensor_sets import load_fashion_mnist_uint8

#: sources ``lscore prepare`` reads, with the image size it writes by default (0: as stored);
#: CelebA and LSUN as the paper's configs crop and resize them
SOURCES: dict[str, int] = {"cifar10": 0, "celeba": 64, "lsun": 256, "folder": 0, "fashion_mnist": 0}


class PrepareError(ValueError):
    """Input that cannot be written as chunks; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Source:
    """What to read: a picklable description, opened in each worker process."""

    name: str
    root: str
    train: bool
    image_size: int = 0  # 0: keep each image's size (all must agree)
    categories: tuple[str, ...] = ("bedroom",)
    val_fraction: float = 0.01  # folder: the share held out for validation
    seed: int = 0
    bad_images: str = "stop"

    def open(self) -> Dataset:
        root = Path(self.root)
        if self.name == "cifar10":
            return cifar10(root, self.train, download=False)
        if self.name == "celeba":
            return celeba(root, self.train, download=False, bad_images=self.bad_images)
        if self.name == "lsun":
            return lsun(root, list(self.categories), self.train)
        if self.name == "fashion_mnist":
            images, labels = load_fashion_mnist_uint8(root, self.train, download=False)
            return torch.utils.data.TensorDataset(images, labels)
        if self.name == "folder":
            full = ImageFolderFlat(root, self.bad_images)
            train, val = split_fraction(full, self.val_fraction, self.seed)
            return train if self.train else val
        raise PrepareError(f"unknown source '{self.name}': use one of {', '.join(SOURCES)}")

    def transform(self) -> v2.Compose:
        """PIL or uint8 tensor -> uint8 CHW tensor: CelebA's crop 140, then resize and crop."""
        steps: list = [v2.ToImage()]
        if self.name == "celeba":
            steps.append(v2.CenterCrop(140))
        if self.image_size:
            steps += [v2.Resize(self.image_size, antialias=True), v2.CenterCrop(self.image_size)]
        return v2.Compose(steps)


class EncodeImage:
    """``litdata.optimize``'s function: sample index -> ``{"image": uint8 CHW, "label": int}``."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._data: Dataset | None = None
        self._transform: v2.Compose | None = None

    def __call__(self, i: int) -> dict[str, Any]:
        if self._data is None:  # once per worker process
            self._data, self._transform = self.source.open(), self.source.transform()
        image, label = self._data[i]
        if isinstance(image, Image.Image):
            image = image.convert("RGB")
        tensor = self._transform(image)  # type: ignore[misc]
        return {"image": np.ascontiguousarray(tensor.numpy(), dtype=np.uint8), "label": int(label)}


def check_same_size(data: Dataset) -> None:
    """Folder images are written as they are, so all must have one size (headers only)."""
    while isinstance(data, torch.utils.data.Subset):
        data = data.dataset
    if not isinstance(data, ImageFolderFlat):
        return
    first = None
    for path in data.files:
        with Image.open(path) as img:
            size = img.size
        if first is None:
            first = (path, size)
        elif size != first[1]:
            raise PrepareError(
                f"{path} is {size[0]}x{size[1]} but {first[0]} is {first[1][0]}x{first[1][1]}: "
                "pass --image-size N to resize and center-crop every image to N x N"
            )


def prepare(
    source: Source,
    out: str,
    workers: int = 1,
    chunk_bytes: str = "64MB",
    progress: bool = True,
) -> dict[str, str]:
    """Write the train and val splits of ``source`` below ``out``; what each split did."""
    from litdata import optimize

    done: dict[str, str] = {}
    for split in ("train", "val"):
        target = split_uri(out, split)
        split_source = dataclasses.replace(source, train=split == "train")
        if not is_remote(out) and (Path(target) / "index.json").is_file():
            done[split] = "complete already, kept"
            continue
        try:
            data = split_source.open()
        except UnreadableImageError as err:  # the same choice, as prepare's option
            hint = str(err).replace("set data.bad_images=skip", "pass --bad-images skip")
            raise PrepareError(hint) from None
        if not source.image_size:
            check_same_size(data)
        resumed = not is_remote(out) and (Path(target) / ".checkpoints").is_dir()
        optimize(
            fn=EncodeImage(split_source),
            inputs=list(range(len(data))),  # type: ignore[arg-type]
            output_dir=target,
            num_workers=workers,
            chunk_bytes=chunk_bytes,
            use_checkpoint=not is_remote(out),
            start_method="fork",
            verbose=progress,
        )
        done[split] = f"{len(data)} images" + (" (resumed)" if resumed else "")  # type: ignore
    return done
