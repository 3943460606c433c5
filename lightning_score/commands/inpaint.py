"""``lscore inpaint CKPT --input SRC --mask NAME|FILE --out DIR``: fill in the missing region.

Masks by name say which region is missing (left, right, top, bottom, center, random[:FRACTION])
or come from a file (.npy / .npz / image; nonzero or white = known) at the model's image size.
Add ``--resample-jump J --resample-repeats R`` (pc sampler) for RePaint's resampling, or
``--conditioning smc --particles K`` for a particle sampler whose error falls as K grows.
"""

from __future__ import annotations

import argparse

from lightning_score.commands.restoration import add_restoration_arguments, run_restoration


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_restoration_arguments(parser)
    parser.add_argument(
        "--mask",
        default="right",
        help="mask name (left, right, top, bottom, center, random) or file",
    )


def run(args: argparse.Namespace) -> int:
    from lightning_score.conditioning.inverse import TASKS
    from lightning_score.conditioning.operators import load_mask

    def operator(shape):
        return TASKS["inpaint"](shape, load_mask(args.mask, tuple(shape[-2:]), args.seed))

    return run_restoration(args, operator, f"inpainting, mask {args.mask}")
