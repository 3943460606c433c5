"""Linear measurement operators y = A x for inverse problems, acting on batches in model space.

Each operator knows A, its adjoint A^T, a pseudo-inverse A^+ and how to solve with
(s I + r A A^T), which is all the projection hook and measurement guidance need
(``lightning_score.conditioning.inverse``, ``lightning_score.conditioning.guidance``). Measurements keep a natural shape:
a masked image, a grey image, a low-resolution image, a vector of projections, a blurred image.

| operator | A | A A^T |
| --- | --- | --- |
| :class:`Mask` (inpainting) | x * mask | mask (0/1, diagonal) |
| :class:`Colorization` | (r + g + b) / sqrt(3) per pixel | I |
| :class:`AveragePool` (super-resolution) | mean over k x k blocks | I / k^2 |
| :class:`RandomProjection` (compressive sensing) | m orthonormal random rows | I |
| :class:`Blur` (deblurring) | circular convolution with a kernel | |H|^2 in Fourier space |

Colorization is Song et al.'s (2021, app. I) orthonormal decoupling: in the colour basis whose
first vector is (1, 1, 1) / sqrt(3), the grey image is the first channel and the others are
unknown, so colorization is inpainting of channels in that basis; A is its first row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_score.sde import batch_broadcast


class LinearOperator:
    """A linear map from data of shape ``data_shape`` (without the batch) to measurements."""

    name: str = "linear"

    def check(self, data_shape: Sequence[int]) -> None:
        """Raise a one-line ValueError when the operator cannot act on ``data_shape``."""

    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def gram_scale(self, like: Tensor) -> Tensor:
        """A A^T where it is a per-entry scaling of the measurement (all operators but Blur)."""
        raise NotImplementedError

    def pinv(self, y: Tensor) -> Tensor:
        """A^+ y = A^T (A A^T)^{-1} y on the range of A."""
        g = self.gram_scale(y)
        return self.adjoint(torch.where(g > 0, y / g.clamp_min(1e-12), torch.zeros_like(y)))

    def project(self, x: Tensor, y: Tensor) -> Tensor:
        """The nearest point to x with A x = y (on the range of A): x + A^+ (y - A x)."""
        return x + self.pinv(y - self(x))

    def gram_solve(self, v: Tensor, noise_var: float, scale: Tensor) -> Tensor:
        """(noise_var I + scale A A^T)^{-1} v, with ``scale`` per sample (shape (B,))."""
        denom = noise_var + batch_broadcast(scale, v) * self.gram_scale(v)
        return torch.where(denom > 0, v / denom.clamp_min(1e-30), torch.zeros_like(v))

    def observation_image(self, y: Tensor) -> Tensor:
        """The measurement drawn in data shape (model space), for figures: A^+ y by default."""
        return self.pinv(y)

    def measure(
        self, x: Tensor, noise_std: float = 0.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """y = A x + noise_std * e with e ~ N(0, I): a simulated observation."""
        y = self(x)
        if noise_std > 0:
            y = y + noise_std * torch.randn(
                y.shape, generator=generator, device=y.device, dtype=y.dtype
            )
        return y


class Mask(LinearOperator):
    """Inpainting: ``mask`` (broadcastable to one example, 1 = known) keeps the known entries."""

    name = "inpaint"

    def __init__(self, mask: Tensor) -> None:
        self.mask = (mask > 0.5).float()

    def check(self, data_shape: Sequence[int]) -> None:
        shape, mask = tuple(data_shape), tuple(self.mask.shape)
        fits = len(mask) <= len(shape) and all(
            m in (1, d) for m, d in zip(reversed(mask), reversed(shape), strict=False)
        )
        if not fits:
            raise ValueError(
                f"mask of shape {tuple(self.mask.shape)} does not fit data of shape {shape}: "
                "give an H x W mask (or C x H x W) at the model's image size"
            )

    def _m(self, like: Tensor) -> Tensor:
        return self.mask.to(device=like.device, dtype=like.dtype)

    def __call__(self, x: Tensor) -> Tensor:
        return x * self._m(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return y * self._m(y)

    def gram_scale(self, like: Tensor) -> Tensor:
        return self._m(like).expand_as(like)

    def project(self, x: Tensor, y: Tensor) -> Tensor:
        """Replacement: the known entries become y's exactly (no rounding of x + y - x)."""
        return torch.where(self._m(x) > 0, y, x)

    def measure(
        self, x: Tensor, noise_std: float = 0.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Noise on the known entries only: the missing ones are not measured (they stay 0)."""
        return super().measure(x, noise_std, generator) * self._m(x)


#: an orthonormal colour basis whose first vector is the grey direction (1, 1, 1) / sqrt(3)
DECOUPLE = torch.tensor(
    [
        [1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)],
        [1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)],
        [1 / math.sqrt(6), -2 / math.sqrt(6), 1 / math.sqrt(6)],
    ]
)


class Colorization(LinearOperator):
    """Colorization: y = the grey channel of the orthonormal decoupling, (r + g + b) / sqrt(3)."""

    name = "colorize"

    def check(self, data_shape: Sequence[int]) -> None:
        if len(data_shape) != 3 or data_shape[0] != 3:
            raise ValueError(
                f"colorization needs RGB images (3, H, W), got data of shape {tuple(data_shape)}"
            )

    def __call__(self, x: Tensor) -> Tensor:
        return x.sum(1, keepdim=True) / math.sqrt(3)

    def adjoint(self, y: Tensor) -> Tensor:
        return y.expand(-1, 3, -1, -1) / math.sqrt(3)

    def gram_scale(self, like: Tensor) -> Tensor:
        return torch.ones_like(like)


class AveragePool(LinearOperator):
    """Super-resolution: y = the mean over ``factor`` x ``factor`` blocks."""

    name = "superres"

    def __init__(self, factor: int) -> None:
        if factor < 2:
            raise ValueError(f"the super-resolution factor must be >= 2, got {factor}")
        self.factor = factor

    def check(self, data_shape: Sequence[int]) -> None:
        if len(data_shape) != 3 or data_shape[1] % self.factor or data_shape[2] % self.factor:
            raise ValueError(
                f"average pooling by {self.factor} needs images (C, H, W) with H and W divisible "
                f"by {self.factor}, got data of shape {tuple(data_shape)}"
            )

    def __call__(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.factor)

    def adjoint(self, y: Tensor) -> Tensor:
        return F.interpolate(y, scale_factor=self.factor, mode="nearest") / self.factor**2

    def gram_scale(self, like: Tensor) -> Tensor:
        return torch.full_like(like, 1.0 / self.factor**2)


class RandomProjection(LinearOperator):
    """Compressive sensing: y = P x for ``m`` random orthonormal rows P (m, D) of a fixed seed."""

    name = "cs"

    def __init__(self, data_shape: Sequence[int], m: int, seed: int = 0) -> None:
        dim = math.prod(data_shape)
        if not 0 < m <= dim:
            raise ValueError(f"compressive sensing needs 0 < measurements <= {dim}, got {m}")
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, m, generator=gen, dtype=torch.float64))
        self.rows = q.T.float().contiguous()  # (m, D), orthonormal
        self.data_shape = tuple(data_shape)

    def check(self, data_shape: Sequence[int]) -> None:
        if tuple(data_shape) != self.data_shape:
            raise ValueError(
                f"the projection was drawn for data of shape {self.data_shape}, got "
                f"{tuple(data_shape)}"
            )

    def _p(self, like: Tensor) -> Tensor:
        return self.rows.to(device=like.device, dtype=like.dtype)

    def __call__(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self._p(x).T

    def adjoint(self, y: Tensor) -> Tensor:
        return (y @ self._p(y)).reshape(y.shape[0], *self.data_shape)

    def gram_scale(self, like: Tensor) -> Tensor:
        return torch.ones_like(like)


def gaussian_kernel(size: int, std: float) -> Tensor:
    """A normalized ``size`` x ``size`` Gaussian blur kernel."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * std**2))
    return (k / k.sum()).float()


class Blur(LinearOperator):
    """Deblurring: circular convolution with a known kernel, diagonal in Fourier space.

    The pseudo-inverse keeps frequencies with |H| above ``rcond`` times the largest (a blur
    wipes out the others: inverting them would only amplify noise and rounding).
    """

    name = "deblur"

    def __init__(self, kernel: Tensor, rcond: float = 1e-3) -> None:
        if kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1]:
            raise ValueError(f"a blur kernel must be square (k, k), got {tuple(kernel.shape)}")
        self.kernel = kernel.float() / kernel.sum()
        self.rcond = rcond

    def check(self, data_shape: Sequence[int]) -> None:
        if len(data_shape) != 3 or min(data_shape[1:]) < self.kernel.shape[0]:
            raise ValueError(
                f"a {self.kernel.shape[0]}x{self.kernel.shape[0]} blur needs images (C, H, W) at "
                f"least that large, got data of shape {tuple(data_shape)}"
            )

    def _transfer(self, like: Tensor) -> Tensor:
        """H = FFT of the kernel placed with its centre at pixel (0, 0)."""
        h, w = like.shape[-2:]
        k = self.kernel.shape[0]
        padded = torch.zeros(h, w, dtype=like.dtype, device=like.device)
        padded[:k, :k] = self.kernel.to(like)
        padded = torch.roll(padded, shifts=(-(k // 2), -(k // 2)), dims=(0, 1))
        return torch.fft.fft2(padded)

    def _apply(self, x: Tensor, spectrum: Tensor) -> Tensor:
        return torch.fft.ifft2(torch.fft.fft2(x) * spectrum).real.to(x.dtype)

    def __call__(self, x: Tensor) -> Tensor:
        return self._apply(x, self._transfer(x))

    def adjoint(self, y: Tensor) -> Tensor:
        return self._apply(y, self._transfer(y).conj())

    def pinv(self, y: Tensor) -> Tensor:
        spectrum = self._transfer(y)
        mag = spectrum.abs()
        keep = mag > self.rcond * mag.max()
        inv = torch.where(keep, 1 / spectrum, torch.zeros_like(spectrum))
        return self._apply(y, inv)

    def gram_solve(self, v: Tensor, noise_var: float, scale: Tensor) -> Tensor:
        mag2 = self._transfer(v).abs() ** 2
        denom = noise_var + batch_broadcast(scale, v) * mag2  # (B, 1, H, W)
        inv = torch.where(denom > 0, 1 / denom.clamp_min(1e-30), torch.zeros_like(denom))
        return self._apply(v, inv)

    def observation_image(self, y: Tensor) -> Tensor:
        return y


# -- masks by name or file ---------------------------------------------------------------------
MASK_NAMES = ("left", "right", "top", "bottom", "center", "random")


def named_mask(name: str, size: tuple[int, int], seed: int = 0) -> Tensor:
    """An (H, W) mask, 1 = known; the name says which region is MISSING. ``random``, or
    ``random:0.7``, hides that fraction of the pixels (default 0.5) at random (``seed``)."""
    h, w = size
    mask = torch.ones(h, w)
    kind, _, arg = name.partition(":")
    if kind == "left":
        mask[:, : w // 2] = 0
    elif kind == "right":
        mask[:, w // 2 :] = 0
    elif kind == "top":
        mask[: h // 2] = 0
    elif kind == "bottom":
        mask[h // 2 :] = 0
    elif kind == "center":
        mask[h // 4 : h - h // 4, w // 4 : w - w // 4] = 0
    elif kind == "random":
        try:
            fraction = float(arg) if arg else 0.5
        except ValueError:
            fraction = math.nan
        if not 0 < fraction < 1:
            raise ValueError(
                f"mask 'random:{arg}': random:FRACTION needs a number in (0, 1), e.g. random:0.7"
            )
        gen = torch.Generator().manual_seed(seed)
        mask = (torch.rand(h, w, generator=gen) >= fraction).float()
    else:
        raise ValueError(
            f"unknown mask '{name}': give one of {', '.join(MASK_NAMES)} (random:FRACTION) "
            "or a mask file (.npy, .npz, .png; nonzero / white = known)"
        )
    return mask


def load_mask(spec: str, size: tuple[int, int], seed: int = 0) -> Tensor:
    """A mask by name (:func:`named_mask`) or from a file: .npy / .npz (first array) / an image;
    nonzero (white) = known. A file mask must already have the model's image size."""
    path = Path(spec)
    if spec.partition(":")[0] in MASK_NAMES and not path.exists():
        return named_mask(spec, size, seed)
    if not path.is_file():
        raise ValueError(
            f"mask '{spec}' is neither a mask name ({', '.join(MASK_NAMES)}) nor an existing file"
        )
    if path.suffix in (".npy", ".npz"):
        from lightning_score.conditioning.inputs import read_array

        array = read_array(path, what="mask")
    else:
        from PIL import Image

        try:
            with Image.open(path) as img:
                array = np.asarray(img.convert("L"))
        except (OSError, SyntaxError, ValueError) as err:
            raise ValueError(
                f"mask {path} is not a readable image ({err}): give .npy, .npz or an image"
            ) from None
    values = np.asarray(array, dtype=np.float32)
    if not np.isfinite(values).all():  # NaN > 0 is False: it would silently mark pixels missing
        raise ValueError(
            f"mask {path} holds {int((~np.isfinite(values)).sum())} NaN or infinite values: give "
            "a mask of 0 (missing) and 1 (known)"
        )
    return torch.from_numpy(values > 0).float()
