"""``lscore train [--config PATH] [--preset NAME ...] [--dry-run] key=value ...``: train from a config.

The config is built in this order: the schema's defaults, the YAML file (and the files its
``base:`` names), each preset (``configs/presets/NAME.yaml``, e.g. ``gpu``, ``ddp``, ``smoke``),
then the ``key=value`` overrides.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_CONFIG = "configs/quickstart.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG})")
    parser.add_argument(
        "--preset",
        action="append",
        default=[],
        metavar="NAME",
        help="partial config merged over --config, repeatable: a name of configs/presets/ "
        "(gpu: bf16-mixed on a GPU; ddp: every GPU of the machine; smoke: a 20-step check) or "
        "a YAML path",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="resolve and validate the config, print it, do not train",
    )
    parser.add_argument(
        "overrides", nargs="*", help="config overrides as key=value (OmegaConf dotlist)"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lightning_score.config import check_finite, check_run_sections, read_config

    path = args.config
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    # Keys, types and the run-wide values first: these need no torch, so mistakes answer at once
    raw = read_config(path, args.overrides, presets=args.preset)
    check_finite(raw)
    check_run_sections(raw)

    from omegaconf import OmegaConf

    from lightning_score.config import hardware_problem
    from lightning_score.experiment import check_network_fits, validate

    cfg = validate(raw)
    if args.dry_run:
        check_network_fits(cfg)
        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        problem = hardware_problem(cfg)
        if problem:
            print(f"note: {problem}", file=sys.stderr)
        return 0
    from lightning_score.training.run import train

    train(cfg)  # prints a summary of the run when it ends
    return 0
