"""Images into the conditional-generation commands: an ``.npz``, a folder or the held-out split of
the model's own data set in, images in [0, 1] at the model's shape out.

An ``.npz`` input holds its images under ``images`` or ``arr_0`` (what ``lscore sample``
writes): uint8 (N, H, W, C) or (N, H, W), or floats in [0, 1] (N, C, H, W). Anything else is
refused rather than repaired: a clamp would turn [-1, 1] images into half-black ones and NaN into
black without a word, and the PSNR against such a "truth" would mean nothing.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_score.config import DataConfig
from lightning_score.data.image_sets import IMAGE_SUFFIXES, UnreadableImageError, _reason

#: keys an ``.npz`` input may hold its images under
NPZ_KEYS = ("images", "arr_0")
#: float images may exceed [0, 1] by rounding (a float32 conversion of uint8 data) this much
RANGE_SLACK = 1e-4


def read_array(path: Path, keys: Sequence[str] = (), what: str = "images") -> np.ndarray:
    """The first of ``keys`` held by an ``.npz`` (no keys: its first array; an ``.npy``: its
    array), read without unpickling. A file numpy cannot read as arrays is refused in one line;
    numpy's own message would suggest loading it unsafely."""
    try:
        with open(path, "rb") as fh:
            data = np.load(fh, allow_pickle=False)
            if isinstance(data, np.ndarray):
                return data
            with data:
                names = [k for k in keys if k in data.files] if keys else data.files[:1]
                if names:
                    return data[names[0]]
                held = ", ".join(data.files) or "no arrays"
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise ValueError(
            f"{path} is not a numpy file of plain arrays (not an .npz/.npy, cut short, or holding "
            f"Python objects): save the {what} with numpy.savez"
        ) from None
    wanted = f"{what} under {' or '.join(keys)}" if keys else what
    example = f"{keys[0]}=..." if keys else "..."
    raise ValueError(f"{path} holds {held}, not {wanted}: save them as np.savez(path, {example})")


def _from_array(array: np.ndarray, source: object = "the input") -> Tensor:
    """(N, C, H, W) floats in [0, 1] from the layouts the module docstring lists."""
    if array.dtype == np.uint8:
        x = torch.from_numpy(array.astype(np.float32) / 255.0)
        if x.dim() == 3:
            return x[:, None]
        if x.dim() == 4:
            return x.permute(0, 3, 1, 2)
    elif np.issubdtype(array.dtype, np.floating) and array.ndim == 4:
        x = torch.from_numpy(array.astype(np.float32))
        bad = (~torch.isfinite(x)).flatten(1).any(1)
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} of the {len(x)} images in {source} hold NaN or infinite values "
                f"(the first: image {int(bad.nonzero()[0])}): give finite images in [0, 1]"
            )
        low, high = float(x.min()), float(x.max())
        if low < -RANGE_SLACK or high > 1 + RANGE_SLACK:
            raise ValueError(
                f"the float images in {source} range from {low:.3g} to {high:.3g}, not [0, 1]: "
                "rescale them (e.g. (x + 1) / 2 for [-1, 1] data) or give uint8 images"
            )
        return x.clamp(0, 1)
    raise ValueError(
        f"images of dtype {array.dtype} and shape {array.shape}: give uint8 (N, H, W[, C]) or "
        "floats in [0, 1] of shape (N, C, H, W)"
    )


def _read_folder(folder: Path) -> Tensor:
    from PIL import Image

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found below {folder}")
    images = []
    for path in files:
        try:
            with Image.open(path) as img:
                images.append(np.asarray(img.convert("RGB")))
        except (OSError, SyntaxError, ValueError) as err:  # as ImageFolderFlat (training) does
            raise UnreadableImageError(
                f"{path} is not a readable image ({_reason(err)}): remove or replace it"
            ) from None
    sizes = {a.shape for a in images}
    if len(sizes) > 1:
        raise ValueError(f"the images below {folder} differ in size ({sorted(sizes)[:3]}...)")
    return _from_array(np.stack(images))


def to_shape(images01: Tensor, data_shape: Sequence[int]) -> Tensor:
    """Images at the model's (C, H, W): resized (antialiased) and grey <-> RGB as needed."""
    channels, height, width = data_shape
    x = images01
    if x.shape[1] == 3 and channels == 1:
        x = x.mean(1, keepdim=True)
    elif x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != channels:
        raise ValueError(f"images with {x.shape[1]} channels for a model of {channels}")
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True)
    return x.clamp(0, 1).contiguous()


#: ``--input`` value that names the held-out split of the checkpoint's own data set
HELD_OUT = "val"


def load_images(
    source: str | Path,
    data_shape: Sequence[int],
    limit: int | None = None,
    data: DataConfig | None = None,
    seed: int = 0,
) -> Tensor:
    """The first ``limit`` images of an ``.npz`` or a folder, in [0, 1] at ``data_shape``; with
    ``source`` "val", of the validation split of ``data`` (a checkpoint's data set, split with
    its ``seed``; 64 without a limit)."""
    if str(source) == HELD_OUT and data is not None:
        from lightning_score.data import data_examples

        return to_shape(data_examples(data, seed, limit or 64), data_shape)
    path = Path(source)
    if path.is_dir():
        images = _read_folder(path)
    elif path.is_file() and path.suffix == ".npz":
        images = _from_array(read_array(path, NPZ_KEYS), path)
    else:
        raise ValueError(f"input {path} is neither an .npz file nor a folder of images")
    if len(data_shape) != 3:
        raise ValueError(f"image inputs need an image model, got data of shape {tuple(data_shape)}")
    return to_shape(images[:limit], data_shape)
