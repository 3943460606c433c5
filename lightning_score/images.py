"""Images out of the model: uint8 conversion (FID tools, ``.npz`` files) and pictures (PNG grids of
images, scatter plots of 2-D points). Every sample grid of the project is drawn here."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from lightning_score.sde import SDE


def to_data_space(sde: SDE, samples: Tensor) -> Tensor:
    """Model-space samples back to the data: images to [0, 1] (clamped, as saved); toy points are
    modeled unscaled, as in training."""
    return sde.unscale_data(samples).clamp(0, 1) if samples.dim() == 4 else samples


def to_uint8(images: Tensor, rgb: bool = True) -> Tensor:
    """Images in [0, 1] (N, C, H, W) to uint8: rounded (data from uint8 maps back exactly),
    clamped, and with ``rgb`` grey images repeated to 3 channels as the Inception network
    expects."""
    if images.dtype != torch.uint8:
        images = (images.float() * 255.0).round().clamp(0, 255).to(torch.uint8)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1) if rgb and images.shape[1] == 1 else images


def to_uint8_nhwc(images01: Tensor) -> np.ndarray:
    """Images in [0, 1] (N, C, H, W) -> uint8 (N, H, W, 3), the layout FID tools read (``arr_0``
    of an ``.npz``)."""
    return to_uint8(images01).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def upscale_for_viewing(images: Tensor, min_size: int = 32) -> Tensor:
    """Nearest-neighbour upscaling so that tiny images (8x8 digits) stay legible in a grid."""
    factor = -(-min_size // images.shape[-1])
    if factor <= 1:
        return images
    return torch.nn.functional.interpolate(images, scale_factor=factor, mode="nearest")


#: pixels of mid grey between tiles: without them dark-background images (digits) merge into strips
GRID_GAP = 2
GAP_GREY = 0.5


def image_grid(images01: Tensor, nrow: int | None = None) -> Tensor:
    """A (3, H, W) grid of images in [0, 1] (uint8 accepted), tiny images upscaled, with a grey
    gap between tiles that neither a dark nor a light background hides."""
    from torchvision.utils import make_grid

    images = images01.float() / 255 if images01.dtype == torch.uint8 else images01.float()
    nrow = nrow or max(1, int(images.shape[0] ** 0.5))
    tiles = upscale_for_viewing(images.clamp(0, 1).cpu())
    return make_grid(tiles, nrow=nrow, padding=GRID_GAP, pad_value=GAP_GREY)


def save_captioned(grid: Tensor, path: Path, caption: str) -> None:
    """``grid`` as a PNG with ``caption`` (step, sampler, NFE) written in a white strip below it
    and stored as the PNG's ``Title`` text, so that a grid says what made it."""
    from PIL import Image, ImageDraw, ImageFont
    from PIL.PngImagePlugin import PngInfo

    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels if pixels.shape[2] == 3 else pixels[..., 0])
    if caption:
        font = ImageFont.load_default(size=11)
        left, top, right, bottom = font.getbbox(caption)
        width = max(image.width, right - left + 8)
        canvas = Image.new(image.mode, (width, image.height + bottom - top + 8), "white")
        canvas.paste(image, (0, 0))
        ImageDraw.Draw(canvas).text((4, image.height + 4 - top), caption, fill="black", font=font)
        image = canvas
    info = PngInfo()
    info.add_text("Title", caption)
    image.save(path, format="PNG", pnginfo=info)


def save_points_plot(
    points: Tensor, path: Path, title: str, reference: Tensor | None = None
) -> None:
    """Scatter plot for 2-D toy samples, over the data (``reference``, grey) when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    if reference is not None:
        ref = reference.detach().cpu().numpy()
        ax.scatter(ref[:, 0], ref[:, 1], s=2, alpha=0.3, color="0.6", label="data")
    pts = points.detach().cpu().numpy()
    ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, color="C0", label="samples")
    if reference is not None:
        ax.legend(loc="upper right", fontsize=7, markerscale=4)
    ax.set_title(title)
    ax.set_aspect("equal")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_grid(
    samples: Tensor, path: Path, title: str, reference: Tensor | None = None
) -> Tensor | None:
    """A PNG grid for images in [0, 1] (or uint8) captioned with ``title``, a scatter plot for
    2-D points (over the data points ``reference`` when given); returns the image grid (for
    loggers), or None for points."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if samples.dim() == 2:
        save_points_plot(samples, path, title, reference)
        return None
    grid = image_grid(samples)
    save_captioned(grid, path, title)
    return grid


def load_numpy(path: str | Path) -> Any:
    """``np.load`` of an ``.npz`` archive or an ``.npy`` array that never unpickles, refusing in
    one line a file of another kind (numpy's own error suggests ``allow_pickle=True``, which
    would let the file run code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass an existing .npz or .npy file")
    if path.suffix == ".npz":
        ok, kind = zipfile.is_zipfile(path), "an .npz archive (numpy's savez)"
    else:
        with open(path, "rb") as fh:
            ok, kind = fh.read(6) == b"\x93NUMPY", "an .npy array (numpy's save)"
    if not ok:
        raise ValueError(
            f"{path} is not {kind}: it is text, another format or truncated; pass a file "
            "written by numpy or by an lscore command"
        )
    return np.load(path, allow_pickle=False)
