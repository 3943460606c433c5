"""Disk image sets through torchvision: CIFAR-10, CelebA 64x64, LSUN (lmdb), image folders."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from lightning_score.data.base import DataNotFoundError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class TransformedDataset(Dataset):
    """Applies an image transform to a torchvision data set that returns (PIL, label)."""

    def __init__(self, base: Dataset, transform) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img, label = self.base[i]
        return self.transform(img), label


def cifar10(root: Path, train: bool, download: bool) -> Dataset:
    from torchvision.datasets import CIFAR10

    try:
        return CIFAR10(str(root), train=train, download=download)
    except RuntimeError as err:
        raise DataNotFoundError(
            f"CIFAR-10 not found under {root} ({err}): set data.download=true (needs internet) "
            f"or place the extracted 'cifar-10-batches-py' folder in {root}"
        ) from None


class ImageFolderFlat(Dataset):
    """Every image below ``root`` (recursively, sorted), label 0; for CelebA, FFHQ or your own."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise DataNotFoundError(f"image folder {root} does not exist: set data.root to a folder of images")
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise DataNotFoundError(
                f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found below {root}: set data.root"
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        with Image.open(self.files[i]) as img:
            return img.convert("RGB"), 0


def celeba(root: Path, train: bool, download: bool) -> Dataset:
    """torchvision's CelebA when its files are there (official split), else a folder of images."""
    from torchvision.datasets import CelebA

    split = "train" if train else "valid"
    try:
        return CelebA(str(root), split=split, target_type=[], download=download)
    except (RuntimeError, FileNotFoundError):
        folder = root / "celeba" / "img_align_celeba"
        if folder.is_dir():
            return ImageFolderFlat(folder)
        raise DataNotFoundError(
            f"CelebA not found under {root}: download img_align_celeba.zip and the list files into "
            f"{root / 'celeba'} (torchvision layout), or set data.download=true (needs internet)"
        ) from None


def lsun(root: Path, categories: list[str], train: bool) -> Dataset:
    """LSUN lmdb databases ``{root}/{category}_{train|val}_lmdb`` through torchvision."""
    from torchvision.datasets import LSUN

    split = "train" if train else "val"
    classes = [f"{c}_{split}" for c in categories]
    missing = [c for c in classes if not (root / f"{c}_lmdb").is_dir()]
    if missing:
        raise DataNotFoundError(
            f"LSUN lmdb folders {[m + '_lmdb' for m in missing]} not found under {root}: download them "
            "with the LSUN download script (github.com/fyu/lsun) and unzip into data.root"
        )
    return LSUN(str(root), classes=classes)
