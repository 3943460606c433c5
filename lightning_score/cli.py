"""``lscore`` entry point: dispatches to ``lightning_score.commands.<name>``.

Errors a user can fix (bad config, missing data, bad checkpoint) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": "train a score model from a config",
    "sample": "draw samples from a checkpoint (.npz + PNG grid)",
    "ablate": "compare sampler settings on the same seeds (table + plot)",
    "evaluate": "FID / IS / KID of a checkpoint or an .npz of samples",
    "stats": "reference Inception statistics of a data set",
    "likelihood": "bits/dim through the probability-flow ODE",
    "convert": "convert an official score_sde_pytorch checkpoint or a diffusers model",
    "export": "export a checkpoint as safetensors (+ config, model card) or a diffusers folder",
    "train-classifier": "train a noise-conditional classifier for classifier guidance",
    "sample-classes": "class-conditional samples (classifier or classifier-free guidance)",
    "inpaint": "fill in masked regions of images (.npz + figure + PSNR/SSIM)",
    "colorize": "colour grey images (.npz + figure + PSNR/SSIM)",
    "inverse": "super-resolution, compressive sensing, deblurring (.npz + figure + PSNR/SSIM)",
}


def _user_errors() -> tuple[type[BaseException], ...]:
    from lightning_score.checkpoint import CheckpointError
    from lightning_score.config import ConfigError
    from lightning_score.data import DataNotFoundError
    from lightning_score.reliability import NonFiniteError

    return (
        ConfigError,
        CheckpointError,
        DataNotFoundError,
        NonFiniteError,
        ValueError,
        FileNotFoundError,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lscore", description="lightning-score: score-based generative modeling through SDEs"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, help_text in COMMANDS.items():
        modules[name] = importlib.import_module(
            f"lightning_score.commands.{name.replace('-', '_')}"
        )
        modules[name].add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)
    except _user_errors() as err:
        print(f"lscore {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    """The message; for an error raised in a DataLoader worker (which PyTorch re-raises with the
    worker's whole traceback as its message) the original message alone."""
    text = str(err)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


if __name__ == "__main__":
    sys.exit(main())
