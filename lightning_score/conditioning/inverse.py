"""Inverse problems y = A x + e with an unconditional score model: inpainting, colorization,
super-resolution, compressive sensing, deblurring (operators in ``lightning_score.conditioning.operators``).

Two methods, both composing with the samplers without copying them:

* ``projection`` (noiseless y): a step hook (:class:`Projection`) that, after every sampler move,
  replaces the measured part of x_t by a fresh draw of its marginal at that time,
  x <- x + A^+ (y_t - A x) with y_t = alpha(t) y + std(t) A z: for a mask this is Song et al.'s
  (2021, app. I.2) replacement method, for colorization the same in the orthonormal colour
  basis. The known part is re-noised at every step including the first (the official code
  starts it clean, its issue #39) and set to y on the result. The method is approximate (the
  unknown part is guided by a draw of y_t rather than conditioned on y); RePaint's resampling
  (``sampling.resample_jump`` / ``resample_repeats``, pc only) reduces that error. It needs a
  fixed-grid sampler: the adaptive ODE refuses it.
* ``dps`` (noisy y, any sampler including the adaptive ODE): the measurement gradient of
  :func:`lightning_score.conditioning.guidance.measurement_guided`.
* ``smc`` (noiseless or noisy y): K particles per sample
  (:mod:`lightning_score.conditioning.particles`), exact as K grows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_score.conditioning.batches import Condition, sample_conditioned
from lightning_score.conditioning.guidance import measurement_guided
from lightning_score.conditioning.operators import (
    AveragePool,
    Blur,
    Colorization,
    LinearOperator,
    Mask,
    RandomProjection,
    gaussian_kernel,
)
from lightning_score.conditioning.particles import DATA_STD, ParticleSamples, smc_solve
from lightning_score.config import SamplingConfig
from lightning_score.sampling import SampleResult
from lightning_score.sampling.base import kernel, noise_like
from lightning_score.sde import SDE, ScoreFn

METHODS = ("projection", "dps", "smc")


class Projection:
    """Step hook: x <- x + A^+ (y_t - A x), y_t ~ p(A x_t | A x_0 = y) at the hook's time t, and
    y itself on the returned sample (t None). ``y`` holds one measurement per sample."""

    def __init__(self, sde: SDE, operator: LinearOperator, y: Tensor) -> None:
        self.sde, self.operator, self.y = sde, operator, y

    def __call__(self, x: Tensor, t: float | None, generator: torch.Generator | None) -> Tensor:
        op = self.operator
        y = self.y.to(x)
        if y.shape[0] != x.shape[0]:
            raise ValueError(
                f"{y.shape[0]} measurements for a batch of {x.shape[0]}: give one per sample"
            )
        if t is not None:
            alpha, std = kernel(self.sde, t, x)
            y = alpha * y + std * op(noise_like(x, generator))
        return op.project(x, y)


def check_measurements(operator: LinearOperator, y: Tensor, data_shape: Sequence[int]) -> None:
    """One-line errors when the operator cannot act on the data or ``y`` does not fit it."""
    operator.check(data_shape)
    expected = tuple(operator(torch.zeros(1, *data_shape)).shape[1:])
    if tuple(y.shape[1:]) != expected:
        raise ValueError(
            f"measurements of shape {tuple(y.shape[1:])} do not fit operator '{operator.name}' on "
            f"data of shape {tuple(data_shape)}, which measures {expected}"
        )


def inverse_condition(
    method: str,
    score_fn: ScoreFn,
    sde: SDE,
    operator: LinearOperator,
    y: Tensor,
    *,
    noise_std: float = 0.0,
    scale: float = 1.0,
    data_std: float | None = None,
    network_sigma: float | None = None,
) -> Condition:
    """The conditioning of ``method`` for measurements ``y`` (one per sample)."""
    if method == "projection":
        if noise_std > 0:
            raise ValueError(
                f"the projection method assumes noiseless measurements, but the noise std is "
                f"{noise_std}: use the dps method for noisy ones"
            )
        return Condition(score_fn, Projection(sde, operator, y))
    if method == "dps":
        guided = measurement_guided(
            score_fn,
            sde,
            operator,
            y,
            noise_std,
            scale=scale,
            data_std=data_std,
            network_sigma=network_sigma,
        )
        return Condition(guided)
    if method == "smc":
        raise ValueError("the smc method is no per-batch condition: call solve_inverse")
    raise ValueError(f"unknown method '{method}': choose one of {', '.join(METHODS)}")


def solve_inverse(
    score_fn: ScoreFn,
    sde: SDE,
    data_shape: Sequence[int],
    operator: LinearOperator,
    y: Tensor,
    cfg: SamplingConfig,
    *,
    method: str = "projection",
    noise_std: float = 0.0,
    samples_per_input: int = 1,
    scale: float = 1.0,
    data_std: float | None = None,
    network_sigma: float | None = None,
    particles: int = 16,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> SampleResult:
    """``samples_per_input`` posterior samples for each measurement in ``y`` (N, ...), in model
    space, shaped (N, samples_per_input, *data_shape). With ``method="smc"`` each sample is one
    run of ``particles`` particles (batches of at most ``batch_size`` particles), and NFE counts
    the score evaluations of all its particles."""
    check_measurements(operator, y, data_shape)
    if samples_per_input < 1:
        raise ValueError(f"samples per input must be >= 1, got {samples_per_input}")
    repeated = y.repeat_interleave(samples_per_input, dim=0)
    if method == "smc":
        out = smc_solve(
            score_fn,
            sde,
            data_shape,
            operator,
            repeated,
            cfg,
            particles=particles,
            noise_std=noise_std,
            data_std=data_std or DATA_STD,
            batch_size=batch_size,
            seed=seed,
            device=device,
        )
        out.samples = out.samples.reshape(y.shape[0], samples_per_input, *data_shape)
        return out

    def condition_for(part: slice) -> Condition:
        return inverse_condition(
            method,
            score_fn,
            sde,
            operator,
            repeated[part].to(device),
            noise_std=noise_std,
            scale=scale,
            data_std=data_std,
            network_sigma=network_sigma,
        )

    out = sample_conditioned(
        condition_for,
        sde,
        data_shape,
        cfg,
        num=repeated.shape[0],
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
    )
    samples = out.samples.reshape(y.shape[0], samples_per_input, *data_shape)
    return SampleResult(samples, out.nfe)


# -- tasks: the operator each command builds ---------------------------------------------------
def superres_operator(data_shape: Sequence[int], factor: int = 2) -> LinearOperator:
    return AveragePool(factor)


def cs_operator(data_shape: Sequence[int], ratio: float = 0.25, seed: int = 0) -> LinearOperator:
    """Compressive sensing with ``ratio`` x D random orthonormal measurements."""
    if not 0 < ratio <= 1:
        raise ValueError(f"the measurement ratio must lie in (0, 1], got {ratio}")
    return RandomProjection(data_shape, max(1, round(ratio * math.prod(data_shape))), seed)


def deblur_operator(
    data_shape: Sequence[int], kernel_size: int = 5, kernel_std: float = 1.0
) -> LinearOperator:
    """A known Gaussian blur kernel of ``kernel_size`` pixels and std ``kernel_std``."""
    if kernel_size < 1 or kernel_std <= 0:
        raise ValueError(
            f"the blur kernel needs a size >= 1 and a std > 0, got {kernel_size}, {kernel_std}"
        )
    return Blur(gaussian_kernel(kernel_size, kernel_std))


def colorize_operator(data_shape: Sequence[int]) -> LinearOperator:
    return Colorization()


def inpaint_operator(data_shape: Sequence[int], mask: Tensor) -> LinearOperator:
    return Mask(mask)


TASKS: dict[str, Callable[..., LinearOperator]] = {
    "inpaint": inpaint_operator,
    "colorize": colorize_operator,
    "superres": superres_operator,
    "cs": cs_operator,
    "deblur": deblur_operator,
}


# -- metrics -----------------------------------------------------------------------------------
def restoration_metrics(samples01: Tensor, truth01: Tensor) -> dict[str, float]:
    """PSNR (dB) and SSIM (torchmetrics, data range 1) of every sample against its truth, and of
    the per-input mean of the samples (an estimate of the posterior mean, which PSNR favours).

    ``samples01`` is (N, K, C, H, W) and ``truth01`` (N, C, H, W), both in [0, 1]. SSIM's Gaussian
    window is shrunk to fit small images (11 pixels, or the largest odd size that fits).
    """
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    n, k = samples01.shape[:2]
    side = min(truth01.shape[-2:])
    window = min(11, side if side % 2 else side - 1)

    def scores(pred: Tensor, target: Tensor) -> tuple[float, float]:
        psnr = peak_signal_noise_ratio(
            pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3)
        )
        ssim = structural_similarity_index_measure(
            pred, target, data_range=1.0, kernel_size=window, reduction="none"
        )
        return float(psnr.mean()), float(ssim.mean())

    flat = samples01.reshape(n * k, *samples01.shape[2:]).double()
    target = truth01.double().repeat_interleave(k, dim=0)
    psnr, ssim = scores(flat, target)
    psnr_mean, ssim_mean = scores(samples01.double().mean(1), truth01.double())
    return {"psnr": psnr, "ssim": ssim, "psnr_of_mean": psnr_mean, "ssim_of_mean": ssim_mean}


@dataclass
class Restoration:
    """The result of :func:`restore`: images in [0, 1]; ``measurement`` in model space."""

    truth01: Tensor  # (N, C, H, W)
    observation01: Tensor  # (N, C, H, W): the measurement drawn as an image
    measurement: Tensor  # (N, ...): y = A x + noise
    samples01: Tensor  # (N, K, C, H, W)
    nfe: int
    metrics: dict[str, float]


def restore(
    score_fn: ScoreFn,
    sde: SDE,
    operator: LinearOperator,
    truth01: Tensor,
    cfg: SamplingConfig,
    *,
    method: str = "projection",
    noise_std: float = 0.0,
    samples_per_input: int = 1,
    scale: float = 1.0,
    data_std: float | None = None,
    network_sigma: float | None = None,
    particles: int = 16,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Restoration:
    """Simulate y = A x + noise from true images (model space, noise seeded by ``seed``), sample
    the posterior, and score the samples against the truth (PSNR / SSIM)."""
    data_shape = tuple(truth01.shape[1:])
    operator.check(data_shape)
    x = sde.scale_data(truth01.float())
    y = operator.measure(x, noise_std, generator=torch.Generator().manual_seed(seed))
    out = solve_inverse(
        score_fn,
        sde,
        data_shape,
        operator,
        y,
        cfg,
        method=method,
        noise_std=noise_std,
        samples_per_input=samples_per_input,
        scale=scale,
        data_std=data_std,
        network_sigma=network_sigma,
        particles=particles,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
    )
    samples01 = sde.unscale_data(out.samples).clamp(0, 1)
    observation01 = sde.unscale_data(operator.observation_image(y)).clamp(0, 1)
    metrics = restoration_metrics(samples01, truth01)
    if isinstance(out, ParticleSamples):
        metrics |= out.stats
    return Restoration(truth01, observation01, y, samples01, out.nfe, metrics)


#: what :func:`save_restoration` writes into its folder
RESTORATION_FILES = ("restoration.npz", "restoration.png", "metrics.json")


def save_restoration(result: Restoration, out_dir: Path, title: str, rows: int = 8) -> Path:
    """``restoration.npz`` (``arr_0``: all samples, uint8 NHWC as FID tools read them, input by
    input; ``truth``, ``observation`` likewise; ``measurement`` as floats), ``restoration.png``
    (the first ``rows`` inputs: truth | observation | samples) and ``metrics.json``; each file
    whole or not at all."""
    from lightning_score.conditioning.figures import restoration_figure
    from lightning_score.images import to_uint8_nhwc
    from lightning_score.outputs import atomic_path, write_text

    npz, png, summary_file = (out_dir / name for name in RESTORATION_FILES)
    n, k = result.samples01.shape[:2]
    with atomic_path(npz) as tmp:
        np.savez(
            tmp,
            to_uint8_nhwc(result.samples01.reshape(n * k, *result.samples01.shape[2:])),
            truth=to_uint8_nhwc(result.truth01),
            observation=to_uint8_nhwc(result.observation01),
            measurement=result.measurement.float().cpu().numpy(),
        )
    with atomic_path(png) as tmp:
        restoration_figure(
            result.truth01[:rows], result.observation01[:rows], result.samples01[:rows], tmp, title
        )
    summary = {"inputs": n, "samples_per_input": k, "nfe": result.nfe, **result.metrics}
    write_text(summary_file, json.dumps(summary, indent=2))
    return npz


__all__ = [
    "METHODS",
    "RESTORATION_FILES",
    "TASKS",
    "Projection",
    "Restoration",
    "check_measurements",
    "inverse_condition",
    "restoration_metrics",
    "restore",
    "save_restoration",
    "solve_inverse",
]
