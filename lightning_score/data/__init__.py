"""Data set registry: ``build_datamodule(cfg.data)`` picks the set by ``data.name``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from lightning_score.config import DataConfig, require, require_choice
from lightning_score.data.base import DataNotFoundError, ScoreDataModule, split_fraction
from lightning_score.data.image_sets import (
    ImageFolderFlat,
    TransformedDataset,
    celeba,
    cifar10,
    lsun,
)
from lightning_score.data.tensor_sets import (
    ImageTensorDataset,
    load_digits_uint8,
    load_fashion_mnist_uint8,
)
from lightning_score.data.toy2d import TOY_SETS
from lightning_score.data.transforms import image_transform
from lightning_score.registry import lookup


def _digits(cfg: DataConfig, seed: int) -> ScoreDataModule:
    def splits() -> tuple[Dataset, Dataset]:
        images, labels = load_digits_uint8()
        train, val = split_fraction(TensorDataset(images, labels), cfg.val_fraction, seed)
        return (
            ImageTensorDataset(
                images[train.indices], labels[train.indices], cfg.image_size, cfg.random_flip
            ),
            ImageTensorDataset(images[val.indices], labels[val.indices], cfg.image_size),
        )

    return ScoreDataModule(cfg, data_shape(cfg), splits, seed)


def _fashion_mnist(cfg: DataConfig, seed: int) -> ScoreDataModule:
    root = Path(cfg.root)

    def splits() -> tuple[Dataset, Dataset]:
        tr = load_fashion_mnist_uint8(root, train=True, download=cfg.download)
        te = load_fashion_mnist_uint8(root, train=False, download=cfg.download)
        return (
            ImageTensorDataset(*tr, size=cfg.image_size, random_flip=cfg.random_flip),
            ImageTensorDataset(*te, size=cfg.image_size),
        )

    return ScoreDataModule(cfg, data_shape(cfg), splits, seed)


def _disk_images(
    cfg: DataConfig, seed: int, make: Callable[[bool], Dataset], center_crop: int | None = None
) -> ScoreDataModule:
    def splits() -> tuple[Dataset, Dataset]:
        train_tf = image_transform(cfg.image_size, cfg.random_flip, center_crop)
        val_tf = image_transform(cfg.image_size, False, center_crop)
        return TransformedDataset(make(True), train_tf), TransformedDataset(make(False), val_tf)

    return ScoreDataModule(cfg, data_shape(cfg), splits, seed)


def _folder(cfg: DataConfig, seed: int) -> ScoreDataModule:
    def splits() -> tuple[Dataset, Dataset]:
        full = ImageFolderFlat(Path(cfg.root), cfg.bad_images)
        train, val = split_fraction(full, cfg.val_fraction, seed)
        return (
            TransformedDataset(train, image_transform(cfg.image_size, cfg.random_flip)),
            TransformedDataset(val, image_transform(cfg.image_size, False)),
        )

    return ScoreDataModule(cfg, data_shape(cfg), splits, seed)


def _toy2d(cfg: DataConfig, seed: int) -> ScoreDataModule:
    sampler = lookup(TOY_SETS, cfg.toy, "toy data set (data.toy)")

    def splits() -> tuple[Dataset, Dataset]:
        gen = torch.Generator().manual_seed(seed)
        n_val = max(1, int(cfg.num_points * cfg.val_fraction))
        train, val = sampler(cfg.num_points, gen), sampler(n_val, gen)
        return TensorDataset(train, torch.zeros(len(train))), TensorDataset(
            val, torch.zeros(len(val))
        )

    return ScoreDataModule(cfg, data_shape(cfg), splits, seed)


def _streaming(cfg: DataConfig, seed: int) -> ScoreDataModule:
    from lightning_score.data.streaming import StreamingDataModule  # litdata loads on use

    return StreamingDataModule(cfg, seed)


GRAYSCALE = {"digits", "fashion_mnist"}

DATASETS: dict[str, Callable[[DataConfig, int], ScoreDataModule]] = {
    "digits": _digits,
    "fashion_mnist": _fashion_mnist,
    "cifar10": lambda cfg, seed: _disk_images(
        cfg, seed, lambda train: cifar10(Path(cfg.root), train, cfg.download)
    ),
    # Song et al.: center crop 140 then resize to 64.
    "celeba": lambda cfg, seed: _disk_images(
        cfg,
        seed,
        lambda train: celeba(Path(cfg.root), train, cfg.download, cfg.bad_images),
        center_crop=140,
    ),
    "lsun": lambda cfg, seed: _disk_images(
        cfg, seed, lambda train: lsun(Path(cfg.root), list(cfg.categories), train)
    ),
    "folder": _folder,
    "toy2d": _toy2d,
    "streaming": _streaming,
}


def data_shape(cfg: DataConfig) -> tuple[int, ...]:
    """Shape of one example, known from the config alone (networks are built before data loads)."""
    if cfg.name == "toy2d":
        return (2,)
    channels = cfg.channels if cfg.name == "streaming" else 1 if cfg.name in GRAYSCALE else 3
    return (channels, cfg.image_size, cfg.image_size)


@dataclasses.dataclass
class ImageBatches:
    """The images of a split in [0, 1], in a fixed order and without random flips. Calling it
    starts a fresh pass (reference statistics read them twice); ``len`` counts the images (for
    progress bars)."""

    dataset: Dataset
    batch_size: int

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __call__(self) -> Iterator[Tensor]:
        for batch in DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False):
            yield batch[0] if isinstance(batch, (list, tuple)) else batch


def image_batches(
    cfg: DataConfig, seed: int, split: str, batch_size: int, limit: int = 0
) -> ImageBatches:
    """The images of a split (``train`` or ``test``) of the data set ``cfg`` names; the first
    ``limit`` of them when ``limit`` > 0."""
    dm = build_datamodule(dataclasses.replace(cfg, random_flip=False), seed)
    if not dm.is_image:
        raise ValueError(
            f"data set '{cfg.name}' holds points, not images: Inception statistics need images"
        )
    dm.setup()
    dataset = dm.train_set if split == "train" else dm.val_set
    if 0 < limit < len(dataset):  # type: ignore[arg-type]
        dataset = Subset(dataset, range(limit))
    return ImageBatches(dataset, batch_size)


def data_examples(cfg: DataConfig, seed: int, num: int) -> Tensor:
    """``num`` examples (images in [0, 1] or points), validation split first: what samples are
    compared with when there are no reference statistics."""
    dm = build_datamodule(cfg, seed=seed)
    dm.setup()
    examples: list[Tensor] = []
    for dataset in (dm.val_set, dm.train_set):
        for i in range(len(dataset)):  # type: ignore[arg-type]
            if len(examples) == num:
                return torch.stack(examples)
            examples.append(dataset[i][0])  # type: ignore[index]
    return torch.stack(examples)


#: how many classes each data set's labels have (None: counted when it loads: the class
#: subfolders of ``folder``); sets missing here have no labels
DATA_CLASSES: dict[str, int | None] = {
    "digits": 10,
    "fashion_mnist": 10,
    "cifar10": 10,
    "folder": None,
    "streaming": None,
}


#: what the labels of a data set mean, for figures
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion_mnist": (
        "T-shirt/top", "trouser", "pullover", "dress", "coat",
        "sandal", "shirt", "sneaker", "bag", "ankle boot",
    ),
    "cifar10": (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ),
}  # fmt: skip


def class_name(d: DataConfig, label: int) -> str:
    """The name of class ``label`` of a data set ("class 3" where names are unknown)."""
    names = CLASS_NAMES.get(d.name, ())
    return names[label] if 0 <= label < len(names) else f"class {label}"


def check_labels(num_classes: int, d: DataConfig, key: str = "model.num_classes") -> None:
    """A class-conditional model (``model.num_classes > 0``; ``key``: the config entry that set
    ``num_classes``) needs a data set with that many labels."""
    if num_classes == 0:
        return
    require(
        d.name in DATA_CLASSES,
        f"{key}={num_classes} needs labelled data, but data.name='{d.name}' has no "
        f"labels: use one of {', '.join(sorted(DATA_CLASSES))} or set {key}=0",
    )
    known = DATA_CLASSES[d.name]
    require(
        known is None or known == num_classes,
        f"data set '{d.name}' has {known} classes, but {key}={num_classes}: set {key}={known}",
    )


def validate_data_config(d: DataConfig) -> None:
    """Check the ``data`` section (the files themselves are checked when the set loads)."""
    require_choice(d.name, DATASETS, "data.name")
    require(d.batch_size > 0, f"data.batch_size must be positive, got {d.batch_size}")
    require(d.image_size > 0, f"data.image_size must be positive, got {d.image_size}")
    require(0 <= d.val_fraction < 1, f"data.val_fraction must lie in [0, 1), got {d.val_fraction}")
    require(d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}")
    require_choice(d.bad_images, {"stop", "skip"}, "data.bad_images")
    if d.name == "streaming":
        require(
            bool(d.input_dir),
            "data.name=streaming needs data.input_dir: a folder or s3:// gs:// URI written by "
            "`lscore prepare`",
        )
        require(d.channels in (1, 3), f"data.channels must be 1 or 3, got {d.channels}")


def build_datamodule(cfg: DataConfig, seed: int = 0) -> ScoreDataModule:
    return lookup(DATASETS, cfg.name, "data set (data.name)")(cfg, seed)


__all__ = [
    "DATASETS",
    "DATA_CLASSES",
    "DataNotFoundError",
    "ImageBatches",
    "ScoreDataModule",
    "build_datamodule",
    "check_labels",
    "class_name",
    "data_examples",
    "data_shape",
    "image_batches",
    "validate_data_config",
]
