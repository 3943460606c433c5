"""Inpainting (right half missing) and 2x super-resolution of held-out images by every
conditioning method at equal NFE: replacement, RePaint, DPS and SMC, with PSNR / SSIM.

    python bench/conditioning_images.py CKPT --nfe 800 --images 8 --samples 4 --figure-dir docs/images

CKPT is a trained image model (the digits quickstart, ``lscore train`` with
configs/quickstart.yaml, or Fashion-MNIST); the held-out images are its checkpoint's validation
split. Each method gets about ``--nfe`` score evaluations per sample: replacement and DPS ``nfe``
steps (DPS also a backward pass per step below the noise level where it takes the network's
Jacobian), RePaint nfe / 8 steps x 8 walks, SMC 8 particles x nfe / 8 steps. Every method starts
from the checkpoint's own sampling config; RePaint alternates stochastic reverse steps with
forward diffusion, so where that config is an ODE solver (EDM's dpmpp_2m) it runs on the pc
sampler (Euler-Maruyama) and a "replacement (pc)" row separates the sampler from the walks.
Prints one JSON object (time per sample on this machine's CPU, one thread; each input's PSNR,
for paired comparisons); ``--figure-dir`` writes one figure per task,
``{tag}_{task}_methods.png`` (tag: the data set's name unless given): truth | observation | the
first sample of each method.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from lightning_score.conditioning.figures import _grid
from lightning_score.conditioning.inputs import load_images
from lightning_score.conditioning.inverse import TASKS, restore
from lightning_score.conditioning.operators import named_mask
from lightning_score.config import SamplingConfig
from lightning_score.data import data_shape
from lightning_score.training.checkpoint import load_score_model

WALKS = PARTICLES = 8


def methods(cfg: SamplingConfig, nfe: int, data_std: float) -> dict[str, tuple[dict, object]]:
    """name -> (restore's keyword arguments, sampling config) at about ``nfe`` NFE."""
    steps = nfe // WALKS
    pc = cfg
    out: dict[str, tuple[dict, object]] = {
        "replacement": ({"method": "projection"}, dataclasses.replace(cfg, steps=nfe))
    }
    if cfg.sampler != "pc":  # RePaint's walks need the stochastic reverse step
        pc = dataclasses.replace(cfg, sampler="pc", predictor="euler_maruyama", corrector="none")
        out["replacement (pc)"] = ({"method": "projection"}, dataclasses.replace(pc, steps=nfe))
    out["RePaint"] = (
        {"method": "projection"},
        dataclasses.replace(pc, steps=steps, resample_jump=1, resample_repeats=WALKS),
    )
    # the commands' defaults: the Gaussian Jacobian above 10 x the data std (the network's
    # throughout diverges to NaN at the start of a VP chain)
    out["DPS"] = (
        {"method": "dps", "data_std": data_std, "network_sigma": 10 * data_std},
        dataclasses.replace(cfg, steps=nfe),
    )
    out["SMC"] = (
        {"method": "smc", "particles": PARTICLES, "data_std": data_std},
        dataclasses.replace(cfg, steps=nfe // PARTICLES - 1),
    )
    return out


def psnr_per_image(samples01: torch.Tensor, truth01: torch.Tensor) -> list[float]:
    """Each input's PSNR averaged over its samples: the spread over inputs (and the paired
    differences between methods on the same inputs) say how much of a table's gap is noise."""
    mse = (samples01.double() - truth01.double()[:, None]).pow(2).flatten(2).mean(2)
    return (-10 * mse.log10()).mean(1).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--nfe", type=int, default=800)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--figure-dir", type=Path, default=None)
    parser.add_argument("--tag", default=None, help="figure name prefix (default: the data set)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these methods")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, exp = load_score_model(args.checkpoint)
    tag = args.tag or exp.data.name
    shape = data_shape(exp.data)
    truth = load_images("val", shape, args.images, data=exp.data, seed=exp.seed)
    operators = {
        "inpaint": TASKS["inpaint"](shape, named_mask("right", tuple(shape[-2:]))),
        "superres": TASKS["superres"](shape, 2),
    }
    table = methods(exp.sampling, args.nfe, exp.model.sigma_data)
    rows = []
    for task, operator in operators.items():
        firsts = []
        for name, (kwargs, cfg) in table.items():
            if args.only and name not in args.only:
                continue
            start = time.perf_counter()
            result = restore(
                model, model.sde, operator, truth, cfg, samples_per_input=args.samples, **kwargs
            )
            seconds = time.perf_counter() - start
            rows.append(
                {"task": task, "method": name, "steps": cfg.steps,
                 "sampler": "smc chain" if kwargs["method"] == "smc" else cfg.sampler,
                 "nfe": result.nfe, "s_per_sample": seconds / (args.images * args.samples),
                 **result.metrics, "psnr_per_image": psnr_per_image(result.samples01, truth)}
            )  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
            firsts.append(result.samples01[:, 0])
            observation = result.observation01
        if args.figure_dir and not args.only:
            grid = [[truth[i], observation[i], *(s[i] for s in firsts)] for i in range(len(truth))]
            heads = ["truth", "observation", *table]
            path = args.figure_dir / f"{tag}_{task}_methods.png"
            _grid(grid, path, col_titles=heads, title=f"{tag} {task}, about {args.nfe} NFE")
    print(json.dumps({"checkpoint": str(args.checkpoint), "tag": tag, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
