"""FIR up/down-sampling (StyleGAN2's ``upfirdn2d``) in plain PyTorch, as NCSN++ uses it.

NCSN++ (Song et al. 2021, appendix H) resamples with the anti-aliasing FIR filter [1, 3, 3, 1]
of StyleGAN2 (Karras et al. 2020), either alone or fused with a 3x3 convolution. The official
code needs a CUDA extension for this; here every step is a dense or depthwise ``conv2d``, so it runs
on any device, in bf16, batched, and keeps channels_last inputs in a conv-friendly layout.

Padding arithmetic follows StyleGAN2: with a filter of length ``K``, resampling ``factor`` and a
fused convolution of size ``k``, the filter is padded so that the output is exactly ``factor``
times larger (or smaller) than the input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fir_filter(taps: Sequence[float]) -> Tensor:
    """The separable 2-D filter outer(k, k), normalized to sum 1 (unit DC gain)."""
    k = torch.as_tensor(taps, dtype=torch.float32)
    k2 = torch.outer(k, k)
    return k2 / k2.sum()


def upfirdn2d(
    x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
) -> Tensor:
    """Zero-insert by ``up``, pad (before, after) on both axes, convolve, keep every ``down``-th.

    The convolution is a true convolution (kernel flipped) applied to every channel on its own.
    """
    n, c, h, w = x.shape
    if up > 1:
        # Put up - 1 zeros after each pixel along both axes.
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = kernel.flip(0, 1).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=c)


def upsample_2d(x: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """FIR upsampling; the filter is scaled by factor^2 so constant images stay constant."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel * factor**2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """FIR downsampling (low-pass, then keep every ``factor``-th pixel)."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


class FIRConv2d(nn.Module):
    """A k x k convolution fused with FIR up- or down-sampling by 2 (StyleGAN2's ``Conv2d``).

    Up: a stride-2 transposed convolution, then the FIR filter. Down: the FIR filter, then a
    stride-2 convolution. Padding happens once, before both operations, as in StyleGAN2.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        up: bool = False,
        down: bool = False,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        if up == down:
            raise ValueError("FIRConv2d resamples: set exactly one of up or down")
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.up = up
        self.register_buffer("kernel", fir_filter(fir_kernel), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        factor = 2
        k = self.weight.shape[-1]
        taps = self.kernel.shape[0]
        if self.up:
            # conv_transpose2d expects (in, out, k, k); flipping makes it the adjoint of conv2d.
            w = self.weight.flip(2, 3).transpose(0, 1)
            x = F.conv_transpose2d(x, w, stride=factor)
            p = (taps - factor) - (k - 1)
            x = upfirdn2d(x, self.kernel * factor**2, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))
        else:
            p = (taps - factor) + (k - 1)
            x = upfirdn2d(x, self.kernel, pad=((p + 1) // 2, p // 2))
            x = F.conv2d(x, self.weight, stride=factor)
        return x + self.bias.to(x.dtype)[None, :, None, None]
