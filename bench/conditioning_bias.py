"""The bias of every conditioning method on one exact posterior: inpainting (left half known) of
Gaussian data on a 1x4x4 image with neighbour correlation 0.75, exact scores, VE and VP.

    python bench/conditioning_bias.py --samples 10000 --particles 32000 --figure docs/images/smc_error_vs_particles.png

For each method: the largest error of the posterior mean over the unknown pixels in posterior
standard deviations, the largest covariance error in units of sd_i sd_j, the NFE and the wall
time per sample, and ``noise``: the Monte Carlo standard error of the mean error (from 4 groups
of the samples), below which an error says nothing. Replacement, RePaint and DPS are scored on
``--samples`` samples; SMC on the weighted particles of ``--particles`` / K independent runs.
Prints one JSON object; ``--figure`` draws the SMC errors against K.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_particles import SDES, Problem, errors, estimate

from lightning_score.conditioning.guidance import measurement_guided
from lightning_score.conditioning.inverse import Projection
from lightning_score.config import SamplingConfig
from lightning_score.sampling import make_generator, sample

BASELINES = {
    "replacement, 500 steps": SamplingConfig(predictor="reverse_diffusion", steps=500),
    "RePaint, 50 steps x 10 walks": SamplingConfig(
        predictor="reverse_diffusion", steps=50, resample_jump=1, resample_repeats=10
    ),
    "RePaint, 50 steps x 40 walks": SamplingConfig(
        predictor="reverse_diffusion", steps=50, resample_jump=1, resample_repeats=40
    ),
    "DPS (posterior-variance term), 500 steps": SamplingConfig(
        predictor="reverse_diffusion", steps=500
    ),
}


def group_noise(x: Tensor, weights: Tensor | None, ref_sd: Tensor, free: Tensor) -> float:
    """Standard error of the mean error from 4 groups of runs (largest over free pixels)."""
    groups = []
    for part in range(4):
        rows = slice(part * x.shape[0] // 4, (part + 1) * x.shape[0] // 4)
        w = torch.ones(x[rows].shape[:2], dtype=x.dtype) if weights is None else weights[rows]
        w = w / w.sum()
        groups.append((w[..., None] * x[rows]).sum((0, 1)))
    spread = torch.stack(groups).std(0) / 2 / ref_sd
    return float(spread[free].max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--particles", type=int, default=32_000)
    parser.add_argument("--smc-steps", type=int, default=500)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument("--smc-only", action="store_true", help="skip the other methods")
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = Problem("inpaint")
    mu_p, cov_p = problem.posterior()
    sd, free = cov_p.diagonal().clamp_min(1e-30).sqrt(), cov_p.diagonal() > 1e-9
    rows = []
    for sde_name, make_sde in SDES.items():
        sde = make_sde()
        score = problem.score(sde)
        y = problem.y.float().expand(args.samples, -1, -1, -1)
        for name, cfg in ({} if args.smc_only else BASELINES).items():
            start = time.perf_counter()
            if name.startswith("DPS"):
                guided = measurement_guided(score, sde, problem.op, y, 0.0, data_std=0.5)
                out = sample(guided, sde, y.shape, cfg, generator=make_generator(0))
            else:
                hook = Projection(sde, problem.op, y)
                out = sample(score, sde, y.shape, cfg, generator=make_generator(0), hook=hook)
            seconds = time.perf_counter() - start
            x = out.samples.flatten(1).double()
            mean_err, cov_err = errors(x.mean(0), torch.cov(x.T), mu_p, cov_p)
            noise = group_noise(x[:, None], None, sd, free)
            rows.append(
                {"sde": sde_name, "method": name, "mean_err": mean_err, "cov_err": cov_err,
                 "noise": noise, "nfe": out.nfe, "ms_per_sample": 1e3 * seconds / args.samples}
            )  # fmt: skip
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        for k in args.ks:
            start = time.perf_counter()
            result = problem.run(sde, k, args.smc_steps, particles=args.particles)
            seconds = time.perf_counter() - start
            mean_err, cov_err = errors(*estimate(result), mu_p, cov_p)
            x = result.particles.flatten(2).double()
            noise = group_noise(x, result.weights.double(), sd, free)
            rows.append(
                {"sde": sde_name, "method": f"SMC, K = {k}, {args.smc_steps} steps",
                 "particles": k, "mean_err": mean_err, "cov_err": cov_err, "noise": noise,
                 "nfe": result.nfe * k, "ms_per_sample": 1e3 * seconds / result.weights.shape[0],
                 "ess_min": float(result.ess.min(0).values.mean()),
                 "resamples": float(result.resamples.float().mean())}
            )  # fmt: skip
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    report = {
        "machine": platform.processor() or platform.machine(),
        "threads": 1,
        "torch": torch.__version__,
        "rows": rows,
    }
    print(json.dumps(report, indent=1))
    if args.figure:
        draw(rows, args.figure)


def draw(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for sde_name in SDES:
        smc = [r for r in rows if r["sde"] == sde_name and "particles" in r]
        ks = [r["particles"] for r in smc]
        for ax, key in zip(axes, ("mean_err", "cov_err"), strict=True):
            ax.plot(ks, [r[key] for r in smc], "o-", label=f"SMC, {sde_name.upper()}")
        plain = next(r for r in rows if r["sde"] == sde_name and r["method"].startswith("repl"))
        label = "replacement" if sde_name == "ve" else None
        axes[0].axhline(plain["mean_err"], ls=":", color="grey", label=label)
    for ax in axes:
        ax.axhline(0.05, ls="--", color="k", lw=0.8)  # the tolerance
    for ax, title in zip(axes, ("posterior mean error (sd)", "covariance error"), strict=True):
        ax.set(xscale="log", yscale="log", xlabel="particles K", title=title)
        ax.set_xticks([1, 4, 16, 64], ["1", "4", "16", "64"])
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
