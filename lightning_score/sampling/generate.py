"""Batched generation with one noise stream per batch and rank, and the uint8 NHWC export."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lightning_score.config import SamplingConfig
from lightning_score.sampling import sample
from lightning_score.sampling.seeding import batch_seed, make_generator
from lightning_score.sde import SDE, ScoreFn


@dataclass
class Generation:
    """``num`` samples (model space, on the CPU), the NFE of each batch and the wall time."""

    samples: Tensor
    batch_nfe: list[int]
    seconds: float

    @property
    def nfe(self) -> float:
        """Score evaluations per sample trajectory (a mean: adaptive solvers vary by batch)."""
        return sum(self.batch_nfe) / len(self.batch_nfe)


def generate(
    score_fn: ScoreFn,
    sde: SDE,
    data_shape: Sequence[int],
    cfg: SamplingConfig,
    *,
    num: int,
    batch_size: int,
    seed: int = 0,
    rank: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Generation:
    """``num`` samples in batches; batch b of rank r draws all its noise from
    ``batch_seed(seed, r, b)``, so batches never share noise and a run repeats exactly."""
    if num <= 0 or batch_size <= 0:
        raise ValueError(
            f"the number of samples and the batch size must be positive, got {num}, {batch_size}"
        )
    device = torch.device(device)
    chunks, batch_nfe = [], []
    start = time.perf_counter()
    for b, first in enumerate(range(0, num, batch_size)):
        n = min(batch_size, num - first)
        gen = make_generator(batch_seed(seed, rank, b), device)
        out = sample(
            score_fn, sde, (n, *data_shape), cfg, generator=gen, device=device, progress=progress
        )
        chunks.append(out.samples.cpu())
        batch_nfe.append(out.nfe)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Generation(torch.cat(chunks), batch_nfe, time.perf_counter() - start)


def to_uint8_nhwc(images01: Tensor) -> np.ndarray:
    """Images in [0, 1] (N, C, H, W) -> uint8 (N, H, W, 3), the layout FID tools read (``arr_0``
    of an ``.npz``); grey images are repeated to RGB as those tools expect."""
    x = (images01.clamp(0, 1) * 255).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).contiguous().numpy()
