"""Disk image sets through torchvision: CIFAR-10, CelebA 64x64, LSUN (lmdb), image folders."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

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
    except (RuntimeError, OSError) as err:  # OSError: a download without a network
        raise DataNotFoundError(
            f"CIFAR-10 not found under {root} ({str(err).splitlines()[0]}): set "
            "data.download=true (needs internet) or place the extracted 'cifar-10-batches-py' "
            f"folder in {root}"
        ) from None


class UnreadableImageError(ValueError):
    """An image file that cannot be opened or decoded; the message names it and the choice."""


def _reason(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


class ImageFolderFlat(Dataset):
    """Every image below ``root`` (recursively, sorted), labelled by its top-level subfolder; for
    CelebA, FFHQ, your own images or classes.

    Files whose header cannot be read (not an image, empty) are found when the set is built; a
    file whose data is cut short is found when it is loaded. ``bad_images="stop"`` refuses
    either with one line naming the file; ``"skip"`` leaves the first kind out (counted, with a
    warning) and loads the next file in place of the second.
    """

    def __init__(self, root: Path, bad_images: str = "stop") -> None:
        if not root.is_dir():
            raise DataNotFoundError(
                f"image folder {root} does not exist: set data.root to a folder of images"
            )
        self.bad_images = bad_images
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataNotFoundError(
                f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found below {root}: set data.root"
            )
        bad: list[tuple[Path, str]] = []
        for path in files:
            try:
                Image.open(path).close()  # parses the header only
            except (OSError, SyntaxError, ValueError) as err:
                bad.append((path, _reason(err)))
        if bad and bad_images == "stop":
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise UnreadableImageError(
                f"{bad[0][0]} is not a readable image ({bad[0][1]}){more}: remove or replace "
                "it, or set data.bad_images=skip to leave such files out"
            )
        if bad:
            warnings.warn(
                f"leaving out {len(bad)} image file{'s' * (len(bad) > 1)} below {root} that "
                f"cannot be read (data.bad_images=skip): {', '.join(str(p) for p, _ in bad[:3])}"
                + (" ..." if len(bad) > 3 else ""),
                stacklevel=2,
            )
        unreadable = {p for p, _ in bad}
        self.files = [p for p in files if p not in unreadable]
        if not self.files:
            raise UnreadableImageError(f"no readable image below {root}")
        tops = [self._top(root, p) for p in self.files]
        #: label i is the top-level subfolder classes[i] (sorted, as torchvision's ImageFolder);
        #: images directly in root form the class ".", so a flat folder is one class, label 0
        self.classes = sorted(set(tops))
        index = {name: i for i, name in enumerate(self.classes)}
        self.labels = [index[top] for top in tops]

    @staticmethod
    def _top(root: Path, path: Path) -> str:
        parts = path.relative_to(root).parts
        return parts[0] if len(parts) > 1 else "."

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, path: Path) -> Image.Image:
        with Image.open(path) as img:
            return img.convert("RGB")

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        for attempt in range(len(self.files)):
            j = (i + attempt) % len(self.files)
            path = self.files[j]
            try:
                return self._load(path), self.labels[j]
            except (OSError, SyntaxError, ValueError) as err:
                if self.bad_images == "stop":
                    raise UnreadableImageError(
                        f"{path} cannot be decoded ({_reason(err)}): remove or replace it, or "
                        "set data.bad_images=skip to load another image in its place"
                    ) from None
                following = self.files[(i + attempt + 1) % len(self.files)]
                warnings.warn(
                    f"{path} cannot be decoded ({_reason(err)}); using {following} in its "
                    "place (data.bad_images=skip)",
                    stacklevel=2,
                )
        raise UnreadableImageError(f"none of the {len(self.files)} images can be decoded")


def celeba(root: Path, train: bool, download: bool, bad_images: str = "stop") -> Dataset:
    """torchvision's CelebA when its files are there (official split), else a folder of images."""
    from torchvision.datasets import CelebA

    split = "train" if train else "valid"
    try:
        return CelebA(str(root), split=split, target_type=[], download=download)
    except (RuntimeError, OSError):  # OSError: missing files, or a download without a network
        folder = root / "celeba" / "img_align_celeba"
        if folder.is_dir():
            return ImageFolderFlat(folder, bad_images)
        raise DataNotFoundError(
            f"CelebA not found under {root}: download img_align_celeba.zip and the list files into "
            f"{root / 'celeba'} (torchvision layout), or set data.download=true (needs internet)"
        ) from None


class LMDBImages(Dataset):
    """Images stored as encoded bytes (webp/jpeg/png) in an lmdb database, LSUN's format.

    Our own reader rather than torchvision's LSUN, which caches its key list as a pickle in the
    current directory and unpickles it on the next run.
    """

    def __init__(self, path: Path) -> None:
        import lmdb

        self.path = path
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False)
        with env, env.begin(write=False) as txn:
            self.keys = [key for key, _ in txn.cursor()]
        self._env = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        import io

        import lmdb

        if self._env is None:  # opened lazily: one handle per data-loader worker
            self._env = lmdb.open(
                str(self.path), readonly=True, lock=False, readahead=False, meminit=False
            )
        with self._env.begin(write=False) as txn:
            data = txn.get(self.keys[i])
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB"), 0


def lsun(root: Path, categories: list[str], train: bool) -> Dataset:
    """LSUN lmdb databases ``{root}/{category}_{train|val}_lmdb``, categories concatenated."""
    split = "train" if train else "val"
    folders = [root / f"{c}_{split}_lmdb" for c in categories]
    missing = [f.name for f in folders if not f.is_dir()]
    if missing:
        raise DataNotFoundError(
            f"LSUN lmdb folders {missing} not found under {root}: download them with the LSUN "
            "download script (github.com/fyu/lsun), unzip into data.root, and set data.categories"
        )
    return ConcatDataset([LMDBImages(f) for f in folders])
