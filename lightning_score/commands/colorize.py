"""``lscore colorize CKPT --input SRC --out DIR``: colour grey versions of the input images.

The grey image is the first channel of an orthonormal colour basis (Song et al. 2021, app. I);
the other two are sampled. Needs an RGB model.
"""

from __future__ import annotations

import argparse

from lightning_score.commands.restoration import add_restoration_arguments, run_restoration


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_restoration_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from lightning_score.conditioning.inverse import TASKS

    return run_restoration(args, TASKS["colorize"], "colorization")
