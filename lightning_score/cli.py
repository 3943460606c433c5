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
    "prepare": "write a data set as LitData chunks for streaming (folder or bucket)",
    "posthoc-ema": "the EMA of any width after training, from power-EMA snapshots (EDM2)",
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


#: (module, class) of the errors a user can fix; a module not yet imported cannot have raised
#: its error, so looking them up imports nothing (an early error leaves torch unimported)
USER_ERRORS = (
    ("lightning_score.config", "ConfigError"),
    ("lightning_score.training.checkpoint", "CheckpointError"),
    ("lightning_score.data", "DataNotFoundError"),
    ("lightning_score.training.reliability", "NonFiniteError"),
    ("lightning_score.run_lock", "RunDirectoryLocked"),
)


class Parser(argparse.ArgumentParser):
    """An argument error in one line (argparse prints the whole usage first, dozens of lines for
    the sampling commands), with where to read the options."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def _user_errors() -> tuple[type[BaseException], ...]:
    loaded = tuple(
        getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules
    )
    return (*loaded, ValueError, FileNotFoundError)


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


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run one command; ``prog`` names the program in messages when it is not ``lscore COMMAND``
    (``train.py`` runs ``train`` through here)."""
    parser, modules = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if prog is not None and argv:
        _subparser(parser, argv[0]).prog = prog
    # parse_known_args, then overrides given after an option (``k=v --dry-run name=x``) join
    # the ones before it; anything else unknown is refused as parse_args would
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if not hasattr(args, "overrides") or any(a.startswith("-") for a in unknown):
            _subparser(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
        args.overrides = [*args.overrides, *unknown]
    from lightning_score.config import check_launcher_environment
    from lightning_score.quiet import silence_known_noise
    from lightning_score.threads import choose_threads

    silence_known_noise()
    try:  # before anything imports Lightning, which reads these variables as it is imported
        check_launcher_environment()
    except ValueError as err:
        print(f"{prog or f'lscore {args.command}'}: error: {err}", file=sys.stderr)
        return 2
    choose_threads()
    try:
        return int(modules[args.command].run(args) or 0)
    except _user_errors() as err:
        print(f"{prog or f'lscore {args.command}'}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of ``command`` (``parser`` itself for an unknown one)."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


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
