"""``lscore`` entry point: dispatches to ``lightning_score.commands.<name>``.

Errors a user can fix (bad config, missing data, bad checkpoint) print one line and exit 2.
Command modules import torch and the rest of the package inside ``run``, so that ``--help`` and
argument errors answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, NoReturn

COMMANDS = {
    "train": "train a score model from a config",
    "sample": "draw samples from a checkpoint (.npz + PNG grid)",
    "merge": "merge the per-rank .npz shards of a sharded `lscore sample`",
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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is no value to show (None, off flags, an
    empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An argument error in one line (argparse prints the whole usage first, dozens of lines for
    the sampling commands), with where to read the options."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def _user_errors() -> tuple[type[BaseException], ...]:
    from lightning_score.config import ConfigError
    from lightning_score.data import DataNotFoundError
    from lightning_score.training.checkpoint import CheckpointError
    from lightning_score.training.reliability import NonFiniteError

    return (
        ConfigError,
        CheckpointError,
        DataNotFoundError,
        NonFiniteError,
        ValueError,
        FileNotFoundError,
    )


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    """The ``lscore`` parser and the command modules by name."""
    from lightning_score import __version__

    parser = Parser(
        prog="lscore",
        description="lightning-score: score-based generative modeling through SDEs",
        epilog="`lscore COMMAND --help` shows a command's options and their defaults",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name, help_text in COMMANDS.items():
        modules[name] = importlib.import_module(
            f"lightning_score.commands.{name.replace('-', '_')}"
        )
        doc = (modules[name].__doc__ or "").strip().replace("``", "`")
        command = sub.add_parser(
            name,
            help=help_text,
            description=doc or help_text,
            formatter_class=HelpFormatter,
        )
        modules[name].add_arguments(command)
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    from lightning_score.quiet import silence_known_noise

    silence_known_noise()
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
