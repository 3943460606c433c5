"""In-memory image sets that ship with packages: sklearn digits and Fashion-MNIST."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from lightning_score.data.base import DataNotFoundError

#: where Debian's `dataset-fashion-mnist` package puts the IDX files
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class ImageTensorDataset(Dataset):
    """uint8 images (N, C, H, W) served as float [0, 1] at ``size``, with optional random flip."""

    def __init__(self, images: Tensor, labels: Tensor, size: int, random_flip: bool = False):
        x = images.float() / 255.0
        if x.shape[-1] != size:
            x = F.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        self.images = x.clamp(0, 1)
        self.labels = labels.long()
        self.random_flip = random_flip

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.images[i]
        if self.random_flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]


def load_digits_uint8() -> tuple[Tensor, Tensor]:
    """The 1797 8x8 digits of scikit-learn (values 0..16), as uint8 (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images / 16.0 * 255.0).astype(np.uint8)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(bunch.target)


def read_idx(path: Path) -> Tensor:
    """Read an unsigned-byte IDX file (MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype, ndim = int.from_bytes(data[0:2], "big"), data[2], data[3]
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {shape}, found {array.size} values")
    return torch.from_numpy(array.reshape(shape).copy())


def find_fashion_mnist(root: Path, train: bool) -> tuple[Path, Path]:
    """IDX files under ``root`` (torchvision's layout or flat) or Debian's package directory."""
    prefix = "train" if train else "t10k"
    candidates = [root / "FashionMNIST" / "raw", root / "fashion-mnist", root, DEBIAN_FASHION_MNIST]
    for folder in candidates:
        for ext in ("", ".gz"):
            img = folder / f"{prefix}-images-idx3-ubyte{ext}"
            lbl = folder / f"{prefix}-labels-idx1-ubyte{ext}"
            if img.is_file() and lbl.is_file():
                return img, lbl
    raise DataNotFoundError(
        f"Fashion-MNIST ({prefix}) not found under {root} or {DEBIAN_FASHION_MNIST}: "
        "`apt-get install dataset-fashion-mnist`, or set data.download=true (needs internet), "
        "or point data.root at a folder with the IDX files"
    )


def load_fashion_mnist_uint8(root: Path, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    try:
        img, lbl = find_fashion_mnist(root, train)
    except DataNotFoundError:
        if not download:
            raise
        from torchvision.datasets import FashionMNIST

        try:
            FashionMNIST(str(root), train=train, download=True)
        except (RuntimeError, OSError) as err:  # OSError: no network
            raise DataNotFoundError(
                f"Fashion-MNIST could not be downloaded into {root} "
                f"({str(err).splitlines()[0]}): place the IDX files there or "
                "`apt-get install dataset-fashion-mnist`"
            ) from None
        img, lbl = find_fashion_mnist(root, train)
    images = read_idx(img).unsqueeze(1)
    labels = read_idx(lbl)
    return images, labels
