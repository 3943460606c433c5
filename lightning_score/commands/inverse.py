"""``lscore inverse CKPT --task superres|cs|deblur --input SRC --out DIR``: linear inverse problems.

``superres``: average pooling by ``--factor``; ``cs``: ``--ratio`` x D random orthonormal
projections (seeded by ``--seed``); ``deblur``: a known Gaussian kernel (``--kernel-size``,
``--kernel-std``). Noiseless y: ``--conditioning projection``; noisy y (``--noise-std``): ``--conditioning dps``; either:
``--conditioning smc --particles K`` (a particle sampler, exact as K grows).
"""

from __future__ import annotations

import argparse

from lightning_score.commands.options import count, number, positive
from lightning_score.commands.restoration import add_restoration_arguments, run_restoration

TASK_NAMES = ("superres", "cs", "deblur")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_restoration_arguments(parser)
    parser.add_argument(
        "--task",
        required=True,
        choices=TASK_NAMES,
        help="superres (average pooling), cs (compressive sensing) or deblur (Gaussian kernel)",
    )
    parser.add_argument("--factor", type=count, default=2, help="superres: pooling factor")
    parser.add_argument(
        "--ratio", type=number(float, above=0, at_most=1), default=0.25, help="cs: measurements / D"
    )
    parser.add_argument("--kernel-size", type=count, default=5, help="deblur: kernel side")
    parser.add_argument("--kernel-std", type=positive, default=1.0, help="deblur: kernel std (px)")


def run(args: argparse.Namespace) -> int:
    from lightning_score.conditioning.inverse import TASKS

    options = {
        "superres": {"factor": args.factor},
        "cs": {"ratio": args.ratio, "seed": args.seed},
        "deblur": {"kernel_size": args.kernel_size, "kernel_std": args.kernel_std},
    }[args.task]

    def operator(shape):
        return TASKS[args.task](shape, **options)

    return run_restoration(args, operator, args.task)
