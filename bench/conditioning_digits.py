"""Inpainting (right half missing) and 2x super-resolution of held-out digits by every
conditioning method at equal NFE: replacement, RePaint, DPS and SMC, with PSNR / SSIM.

    python bench/conditioning_digits.py CKPT --nfe 800 --images 8 --samples 4 --figure-dir docs/images

CKPT is a trained digits model (``lscore train`` with configs/quickstart.yaml). Each method gets
about ``--nfe`` score evaluations per sample: replacement and DPS ``nfe`` steps (DPS also a
backward pass per step), RePaint nfe / 8 steps x 8 walks, SMC 8 particles x nfe / 8 steps.
Prints one JSON object (time per sample on this machine's CPU, one thread); ``--figure-dir``
writes one figure per task: truth | observation | the first sample of each method.
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
from lightning_score.data import data_shape
from lightning_score.training.checkpoint import load_score_model

WALKS = PARTICLES = 8


def methods(cfg, nfe: int) -> dict[str, tuple[dict, object]]:
    """name -> (restore's keyword arguments, sampling config) at about ``nfe`` NFE."""
    steps = nfe // WALKS
    return {
        "replacement": ({"method": "projection"}, dataclasses.replace(cfg, steps=nfe)),
        "RePaint": (
            {"method": "projection"},
            dataclasses.replace(cfg, steps=steps, resample_jump=1, resample_repeats=WALKS),
        ),
        # the commands' defaults: the Gaussian Jacobian above 10 x the data std (the network's
        # throughout diverges to NaN)
        "DPS": (
            {"method": "dps", "data_std": 0.5, "network_sigma": 5.0},
            dataclasses.replace(cfg, steps=nfe),
        ),
        "SMC": (
            {"method": "smc", "particles": PARTICLES},
            dataclasses.replace(cfg, steps=nfe // PARTICLES - 1),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--nfe", type=int, default=800)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--figure-dir", type=Path, default=None)
    parser.add_argument("--only", nargs="+", default=None, help="run only these methods")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, exp = load_score_model(args.checkpoint)
    shape = data_shape(exp.data)
    truth = load_images("val", shape, args.images, data=exp.data, seed=exp.seed)
    operators = {
        "inpaint": TASKS["inpaint"](shape, named_mask("right", tuple(shape[-2:]))),
        "superres": TASKS["superres"](shape, 2),
    }
    rows = []
    for task, operator in operators.items():
        firsts = []
        for name, (kwargs, cfg) in methods(exp.sampling, args.nfe).items():
            if args.only and name not in args.only:
                continue
            start = time.perf_counter()
            result = restore(
                model, model.sde, operator, truth, cfg, samples_per_input=args.samples, **kwargs
            )
            seconds = time.perf_counter() - start
            rows.append(
                {"task": task, "method": name, "nfe": result.nfe,
                 "s_per_sample": seconds / (args.images * args.samples), **result.metrics}
            )  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
            firsts.append(result.samples01[:, 0])
            observation = result.observation01
        if args.figure_dir and not args.only:
            grid = [[truth[i], observation[i], *(s[i] for s in firsts)] for i in range(len(truth))]
            heads = ["truth", "observation", *methods(exp.sampling, args.nfe)]
            path = args.figure_dir / f"digits_{task}_methods.png"
            _grid(grid, path, col_titles=heads, title=f"{task}, about {args.nfe} NFE per sample")
    print(json.dumps({"checkpoint": str(args.checkpoint), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
