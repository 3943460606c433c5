"""Data modules on real offline data (sklearn digits) and tiny files in each set's on-disk format."""

import gzip
import io
import pickle
import struct
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from lightning_score.config import ConfigError, DataConfig
from lightning_score.data import DataNotFoundError, build_datamodule, data_shape
from lightning_score.data.image_sets import ImageFolderFlat
from lightning_score.data.toy2d import TOY_SETS, gaussian_mixture, gaussian_mixture_log_prob
from lightning_score.experiment import load_config

ROOT = Path(__file__).resolve().parents[1]


def first_batch(cfg: DataConfig, train: bool = True):
    dm = build_datamodule(cfg, seed=0)
    dm.setup("fit")
    loader = dm.train_dataloader() if train else dm.val_dataloader()
    return dm, next(iter(loader))


def check_images(x: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert x.shape[1:] == shape and x.dtype == torch.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.5


def test_digits_are_real_and_split():
    cfg = DataConfig(name="digits", image_size=8, batch_size=16)
    dm, (x, y) = first_batch(cfg)
    check_images(x, (1, 8, 8))
    assert len(dm.train_set) + len(dm.val_set) == 1797
    assert set(y.tolist()) <= set(range(10))


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", n) for n in array.shape
    )
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    cfg = DataConfig(name="fashion_mnist", root=str(tmp_path), image_size=28, batch_size=4)
    dm, (x, _) = first_batch(cfg)
    check_images(x, (1, 28, 28))
    assert len(dm.train_set) == 12 and len(dm.val_set) == 4


def test_truncated_idx_is_reported(tmp_path):
    from lightning_score.data.tensor_sets import read_idx

    path = tmp_path / "bad-idx.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(struct.pack(">BBBBI", 0, 0, 8, 1, 100) + b"\x00" * 10)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


def test_cifar10_reads_python_batches(tmp_path, monkeypatch):
    """The CIFAR-10 python layout; torchvision's md5 check is bypassed for this tiny fixture only."""
    import torchvision.datasets.cifar as tv_cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [0, 1, 2]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": [str(i) for i in range(10)]})
    )
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    cfg = DataConfig(
        name="cifar10", root=str(tmp_path), image_size=32, batch_size=5, random_flip=True
    )
    dm, (x, _y) = first_batch(cfg)
    check_images(x, (3, 32, 32))
    assert len(dm.train_set) == 15 and len(dm.val_set) == 3


def test_cifar10_missing_says_how_to_get_it(tmp_path):
    dm = build_datamodule(DataConfig(name="cifar10", root=str(tmp_path)))
    with pytest.raises(DataNotFoundError, match=r"data\.download=true"):
        dm.setup("fit")


def _png(size: tuple[int, int], seed: int) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    return Image.fromarray(arr)


def test_celeba_folder_center_crop_140_resize_64(tmp_path):
    folder = tmp_path / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    for i in range(5):
        _png((178, 218), i).save(folder / f"{i:06d}.jpg")
    cfg = DataConfig(name="celeba", root=str(tmp_path), image_size=64, batch_size=2)
    _, (x, _) = first_batch(cfg)
    check_images(x, (3, 64, 64))


def test_lsun_lmdb(tmp_path):
    for split, n in (("train", 6), ("val", 2)):
        env = lmdb.open(str(tmp_path / f"church_outdoor_{split}_lmdb"), map_size=1 << 24)
        with env.begin(write=True) as txn:
            for i in range(n):
                buf = io.BytesIO()
                _png((300, 260), i).save(buf, format="webp")
                txn.put(f"{i:040x}".encode(), buf.getvalue())
        env.close()
    cfg = DataConfig(
        name="lsun", root=str(tmp_path), image_size=32, batch_size=3, categories=["church_outdoor"]
    )
    dm, (x, _) = first_batch(cfg)
    check_images(x, (3, 32, 32))
    assert len(dm.train_set) == 6 and len(dm.val_set) == 2
    with pytest.raises(DataNotFoundError, match="bedroom_train_lmdb"):
        build_datamodule(
            DataConfig(name="lsun", root=str(tmp_path), categories=["bedroom"])
        ).setup()


def test_image_folder_and_missing_folder(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for i in range(6):
        _png((40, 30), i).save(tmp_path / "a" / ("b" if i % 2 else "") / f"{i}.png")
    cfg = DataConfig(
        name="folder", root=str(tmp_path / "a"), image_size=16, batch_size=2, val_fraction=0.34
    )
    dm, (x, _) = first_batch(cfg)
    check_images(x, (3, 16, 16))
    assert len(dm.train_set) == 4 and len(dm.val_set) == 2
    with pytest.raises(DataNotFoundError, match=r"set data\.root"):
        build_datamodule(DataConfig(name="folder", root=str(tmp_path / "none"))).setup()


@pytest.mark.parametrize("toy", sorted(TOY_SETS))
def test_toy_sets(toy):
    cfg = DataConfig(name="toy2d", toy=toy, num_points=1000, batch_size=100)
    _dm, (x, _) = first_batch(cfg)
    assert x.shape == (100, 2) and data_shape(cfg) == (2,)
    assert torch.isfinite(x).all() and x.abs().max() < 6


def test_gaussian_mixture_density_integrates_to_one():
    grid = torch.linspace(-4, 4, 801)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1).double()
    mass = gaussian_mixture_log_prob(pts).exp().sum() * (8 / 800) ** 2
    assert abs(mass.item() - 1) < 1e-3
    sample = gaussian_mixture(50_000, torch.Generator().manual_seed(0))
    # mean log density over samples is minus the entropy; compare with the grid integral
    entropy = (
        -(gaussian_mixture_log_prob(pts).exp() * gaussian_mixture_log_prob(pts)).sum()
        * (8 / 800) ** 2
    )
    assert abs(-gaussian_mixture_log_prob(sample.double()).mean() - entropy) < 0.02


def test_per_device_batch_is_global_over_world_size():
    class FakeTrainer:
        world_size = 4

    dm = build_datamodule(DataConfig(name="digits", batch_size=64))
    dm.trainer = FakeTrainer()
    assert dm.per_device_batch_size() == 16


def _folder_with_bad_files(root):
    root.mkdir()
    for i in range(6):
        _png((12, 12), i).save(root / f"{i}.png")
    (root / "garbage.png").write_bytes(bytes(range(256)) * 4)  # not an image at all
    buf = io.BytesIO()
    _png((12, 12), 9).save(buf, format="PNG")
    (root / "cut.png").write_bytes(buf.getvalue()[:200])  # a valid header, data cut short


def test_folder_with_unreadable_files_stops_with_one_line_by_default(tmp_path, capsys):
    from lightning_score.cli import main

    _folder_with_bad_files(tmp_path / "imgs")
    cfg = DataConfig(name="folder", root=str(tmp_path / "imgs"), image_size=8, val_fraction=0.2)
    with pytest.raises(ValueError, match=r"garbage.png .*data.bad_images=skip") as err:
        build_datamodule(cfg).setup()
    assert "\n" not in str(err.value)
    # a file whose header reads but whose data does not is found when it is loaded
    cut = ImageFolderFlat(tmp_path / "imgs", bad_images="skip")
    index = [p.name for p in cut.files].index("cut.png")
    strict = ImageFolderFlat(tmp_path / "imgs", bad_images="skip")
    strict.bad_images = "stop"
    with pytest.raises(ValueError, match=r"cut.png cannot be decoded") as err:
        strict[index]
    assert "\n" not in str(err.value)
    # the same when training loads the images in a DataLoader worker: one line, exit 2
    allcut = tmp_path / "allcut"
    allcut.mkdir()
    for i in range(8):
        (allcut / f"{i}.png").write_bytes((tmp_path / "imgs" / "cut.png").read_bytes())
    overrides = [f"data.root={allcut}", "data.name=folder", "data.image_size=8"]
    overrides += [f"out_dir={tmp_path / 'runs'}", "data.num_workers=1", "data.batch_size=4"]
    overrides += ["trainer.max_steps=1", "model.kwargs.channels=[8,16]"]
    assert main(["train", "--config", str(ROOT / "configs" / "quickstart.yaml"), *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "cannot be decoded" in err[-1] and "Traceback" not in err[-1]
    assert not any("Traceback" in line for line in err), err


def test_folder_with_unreadable_files_skipped_when_asked(tmp_path):
    _folder_with_bad_files(tmp_path / "imgs")
    cfg = DataConfig(
        name="folder", root=str(tmp_path / "imgs"), image_size=8, val_fraction=0.25,
        bad_images="skip",
    )  # fmt: skip
    dm = build_datamodule(cfg)
    with pytest.warns(UserWarning, match=r"leaving out 1 image file .*garbage.png"):
        dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 7  # 6 good + the one that fails late
    folder = ImageFolderFlat(tmp_path / "imgs", bad_images="skip")
    index = [p.name for p in folder.files].index("cut.png")
    with pytest.warns(UserWarning, match=r"cut.png cannot be decoded .* using .* in its place"):
        image, _ = folder[index]
    assert image.size == (12, 12)
    with pytest.raises(ConfigError, match=r"data.bad_images='ignore' is not valid"):
        load_config(None, ["data.bad_images=ignore"])


@pytest.mark.parametrize("name", ["cifar10", "celeba", "fashion_mnist"])
def test_a_download_without_a_network_is_one_clear_error(name, tmp_path, monkeypatch):
    """data.download=true offline: a DataNotFoundError naming the fix, not a URLError traceback."""
    import urllib.error
    import urllib.request

    from lightning_score.data import tensor_sets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(urllib.request.OpenerDirector, "open", offline)
    # as on a machine without Debian's dataset-fashion-mnist package
    monkeypatch.setattr(tensor_sets, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-copy")
    cfg = DataConfig(name=name, root=str(tmp_path / "nothing"), download=True, image_size=32)
    with pytest.raises(DataNotFoundError) as err:
        build_datamodule(cfg).setup()
    assert "\n" not in str(err.value) and ("download" in str(err.value))
