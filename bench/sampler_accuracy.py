"""Error against NFE of every few-step sampler on every SDE, with the exact score of Gaussian data.

    python bench/sampler_accuracy.py --figure docs/images/sampler_error_vs_nfe.png

The data are the sampler tests' N(m, s^2 I) (m = (0.5, -0.5, 0.25, 0), s = 0.7). Per sampler,
SDE and NFE (the step count whose counted NFE is nearest, ``sampling.cost.steps_for_nfe``) it
prints one JSON line: the relative error of the samples' standard deviation and the error of
their mean (in units of s). A deterministic solver with this score is an affine map of x_T, so
its output law is computed exactly from two runs (x_T = 0 and 1); a stochastic one is measured
on ``--samples`` samples. Then one JSON object with each deterministic solver's convergence
slope: the pathwise error to the adaptive ODE solution (rtol 1e-10) at 40, 80 and 160 NFE, and
its order -d log(error) / d log(NFE) between 80 and 160.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import torch

from lightning_score.config import SamplingConfig
from lightning_score.sampling import make_generator, ode_solve, sample
from lightning_score.sampling.analytic import gaussian_score
from lightning_score.sampling.cost import steps_for_nfe
from lightning_score.sde import EDMSDE, SDE, VESDE, VPSDE, SubVPSDE

SDES = {"ve": lambda: VESDE(sigma_max=50.0), "vp": VPSDE, "subvp": SubVPSDE, "edm": EDMSDE}
M = torch.tensor([0.5, -0.5, 0.25, 0.0], dtype=torch.float64)
S = 0.7
#: label -> sampling overrides; every registered few-step family, UniPC and DEIS at both orders
FAMILIES: dict[str, dict] = {
    "euler": {"sampler": "euler"},
    "heun": {"sampler": "heun"},
    "dpmpp_2m": {"sampler": "dpmpp_2m"},
    "euler_ancestral": {"sampler": "euler_ancestral"},
    "dpmpp_2m_sde": {"sampler": "dpmpp_2m_sde"},
    "dpmpp_3m": {"sampler": "dpmpp_3m"},
    "dpmpp_3m_sde": {"sampler": "dpmpp_3m_sde"},
    "unipc_bh2_3": {"sampler": "unipc", "order": 3, "variant": "bh2"},
    "unipc_bh1_3": {"sampler": "unipc", "order": 3, "variant": "bh1"},
    "unipc_bh2_2": {"sampler": "unipc", "order": 2, "variant": "bh2"},
    "deis_3": {"sampler": "deis", "order": 3},
    "deis_2": {"sampler": "deis", "order": 2},
    "restart": {"sampler": "restart"},
}
STOCHASTIC = {"euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "restart"}


def law_error(sde: SDE, cfg: SamplingConfig, stochastic: bool, n: int) -> dict[str, float]:
    """Relative std error and mean error (units of s) of the samples, with how they were got."""
    score = gaussian_score(sde, M, S)
    if stochastic:
        x = sample(score, sde, (n, 4), cfg, generator=make_generator(0), device="cpu").samples
        std, mean = x.std(0).mean().item(), x.mean(0)
        how = f"monte carlo, {n} x 4 draws"
    else:  # out = a x_T + b per coordinate: two runs give the law of a x_T + b exactly

        def run(value: float) -> torch.Tensor:
            def start(x: torch.Tensor, t: float | None, g) -> torch.Tensor:
                return torch.full_like(x, value) if t == sde.T else x

            return sample(score, sde, (1, 4), cfg, hook=start, device="cpu").samples[0]

        b = run(0.0)
        std, mean = ((run(1.0) - b) * sde.prior_std()).abs().mean().item(), b
        how = "exact (affine map of x_T)"
    mean_err = ((mean - M.to(mean)).abs().max() / S).item()
    return {"std_error": std / S - 1, "mean_error": mean_err, "law": how}


def convergence(sde: SDE, overrides: dict) -> dict[str, object]:
    """Pathwise errors at 40, 80, 160 NFE (float64, no final denoising) to the adaptive solution
    from the same x_T, and the order between the last two."""
    score = gaussian_score(sde, M, S)
    x_T = sde.prior_sampling((200, 4), generator=make_generator(6), dtype=torch.float64)
    ref = ode_solve(score, sde, x_T, sde.T, sde.default_eps, rtol=1e-10, atol=1e-10)

    def start(x: torch.Tensor, t: float | None, g) -> torch.Tensor:
        return x_T if t == sde.T else x

    errors = {}
    for nfe in (40, 80, 160):
        # the SDE's own eps, not the few-step floor (sub-VP's): the reference ends there too
        cfg = SamplingConfig(corrector="none", denoise=False, eps=sde.default_eps, **overrides)
        cfg = dataclasses.replace(cfg, steps=steps_for_nfe(sde, cfg, nfe))
        x = sample(score, sde, x_T.shape, cfg, hook=start, device="cpu").samples
        errors[nfe] = ((x - ref).norm() / ref.norm()).item()
    return {"errors": errors, "order": math.log(errors[80] / errors[160]) / math.log(2)}


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SDES), figsize=(4 * len(SDES), 4), sharey=True)
    colors = dict(zip(FAMILIES, plt.cm.tab20.colors, strict=False))
    for ax, sde_name in zip(axes, SDES, strict=True):
        for label in FAMILIES:
            pts = [
                (r["nfe"], abs(r["std_error"]))
                for r in rows
                if r["sde"] == sde_name and r["sampler"] == label
            ]
            style = "--" if label in STOCHASTIC else "-"
            ax.loglog(
                *zip(*pts, strict=True), style, marker="o", ms=3, label=label, color=colors[label]
            )
        ax.axhline(0.02, color="grey", lw=0.8, ls=":")
        ax.axhline(0.005, color="grey", lw=0.8, ls=":")
        ax.set_title(sde_name, fontsize=10)
        ax.set_xticks([5, 10, 20, 40], labels=["5", "10", "20", "40"])
        ax.minorticks_off()
        ax.set_xlabel("NFE")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("|std(samples) / s - 1| (exact score, Gaussian data)")
    axes[-1].legend(fontsize=7, loc="lower left")
    fig.suptitle(
        "Few-step samplers: error of the data's standard deviation against NFE "
        "(dotted: 2% and 0.5%; dashed: stochastic)",
        fontsize=10,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nfe", default="5,10,20,40", help="comma-separated NFE targets")
    parser.add_argument("--samples", type=int, default=50_000, help="draws of a stochastic sampler")
    parser.add_argument("--figure", type=Path, default=None, help="write the error plot here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for sde_name, make in SDES.items():
        sde = make()
        for label, overrides in FAMILIES.items():
            base = SamplingConfig(corrector="none", **overrides)
            done = set()
            for target in map(int, args.nfe.split(",")):
                cfg = dataclasses.replace(base, steps=steps_for_nfe(sde, base, target))
                if cfg.steps in done:  # restart's fewest NFE lie above 5 and 10
                    continue
                done.add(cfg.steps)
                out = sample(lambda x, t: -x, sde, (1, 1), cfg, device="cpu")  # counted NFE
                row = {"sde": sde_name, "sampler": label, "steps": cfg.steps, "nfe": out.nfe}
                row.update(law_error(sde, cfg, label in STOCHASTIC, args.samples))
                rows.append(row)
                print(json.dumps(row), flush=True)
    slopes = {
        sde_name: {
            label: convergence(make(), overrides)
            for label, overrides in FAMILIES.items()
            if label not in STOCHASTIC
        }
        for sde_name, make in SDES.items()
    }
    print(json.dumps({"convergence": slopes}))
    if args.figure:
        figure(rows, args.figure)


if __name__ == "__main__":
    main()
