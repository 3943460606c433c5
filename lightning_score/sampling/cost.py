"""What a sampling run will cost, known before it starts: score evaluations (NFE) per sample,
counted on a dry run, times the measured seconds of one evaluation of the model per sample.

Used by the commands to say up front when their defaults would run for hours on this machine
(``lscore evaluate`` with the paper's 50,000 samples of a 2,000-NFE sampler, say).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lightning_score.config import SamplingConfig
from lightning_score.sampling import sample
from lightning_score.sde import SDE, ScoreFn


def nfe_per_sample(sde: SDE, cfg: SamplingConfig) -> int | None:
    """Score evaluations one sample costs under ``cfg``, counted by running the sampler on one
    scalar with a stand-in score (-x, no network), so the count is the sampler's own; None for
    the adaptive ODE solver, whose count depends on the model."""
    if cfg.sampler == "ode":
        return None
    return sample(lambda x, t: -x, sde, (1, 1), cfg, device="cpu").nfe


def steps_for_nfe(sde: SDE, cfg: SamplingConfig, nfe: int) -> int:
    """The step count whose counted NFE under ``cfg`` comes closest to ``nfe`` (the smaller on a
    tie): how an ablation puts samplers of 1, 2 or more NFE per step on one axis."""
    best, best_gap = 1, None
    for steps in range(1, nfe + 1):
        count = nfe_per_sample(sde, dataclasses.replace(cfg, steps=steps))
        if count is None:
            raise ValueError(f"sampler '{cfg.sampler}' has no fixed NFE to aim at")
        gap = abs(count - nfe)
        if best_gap is None or gap < best_gap:
            best, best_gap = steps, gap
        if count >= nfe:
            break
    return best


def timed(fn: Callable[[], object], device: torch.device | str) -> float:
    """Seconds one call of ``fn`` takes, after a warm-up call (lazy initialisation, kernel
    selection); a GPU is synchronised around it."""
    device = torch.device(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.no_grad():
        fn()
        sync()
        start = time.perf_counter()
        fn()
        sync()
    return time.perf_counter() - start


def seconds_per_evaluation(
    score_fn: ScoreFn,
    sde: SDE,
    data_shape: Sequence[int],
    device: torch.device | str,
    batch: int = 16,
) -> float:
    """Wall time of one score evaluation per sample, measured on a batch of ``batch`` (on a GPU
    a larger sampling batch is cheaper per sample: an upper bound there)."""
    x = torch.randn(batch, *data_shape, device=device)
    t = torch.full((batch,), sde.T / 2, device=device)
    return timed(lambda: score_fn(x, t), device) / batch


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.4 h``: how long, at a glance."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _short(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


@dataclass
class RunEstimate:
    """``num`` samples at ``nfe`` score evaluations of ``seconds_per_eval`` each (per sample), plus
    ``seconds_per_image`` of other work per sample (e.g. the Inception network)."""

    num: int
    nfe: int
    seconds_per_eval: float
    device: str
    seconds_per_image: float = 0.0

    @property
    def seconds(self) -> float:
        return self.num * (self.nfe * self.seconds_per_eval + self.seconds_per_image)

    def describe(self) -> str:
        parts = [f"{self.nfe} NFE x {_short(self.seconds_per_eval)}"] if self.nfe else []
        if self.seconds_per_image:
            parts.append(f"{_short(self.seconds_per_image)} of Inception")
        return (
            f"about {format_duration(self.seconds)} on {self.device} ({self.num} samples x "
            f"({' + '.join(parts)}) per sample, measured)"
        )


def estimate_sampling(
    score_fn: ScoreFn,
    sde: SDE,
    data_shape: Sequence[int],
    cfg: SamplingConfig,
    num: int,
    device: torch.device | str,
) -> RunEstimate | None:
    """The time ``num`` samples under ``cfg`` will take here (None for the adaptive ODE solver)."""
    nfe = nfe_per_sample(sde, cfg)
    if nfe is None:
        return None
    per_eval = seconds_per_evaluation(score_fn, sde, data_shape, device)
    return RunEstimate(num, nfe, per_eval, str(device))
