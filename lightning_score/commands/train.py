"""``lscore train [--config PATH] [--dry-run] key=value ...``: train from a config."""

from __future__ import annotations

import argparse
import sys

from lightning_score.config import hardware_problem
from lightning_score.experiment import load_config

DEFAULT_CONFIG = "configs/quickstart.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG})")
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

    from omegaconf import OmegaConf

    path = args.config
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    cfg = load_config(path, args.overrides)
    if args.dry_run:
        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        problem = hardware_problem(cfg)
        if problem:
            print(f"note: {problem}", file=sys.stderr)
        return 0
    from lightning_score.train import train

    run_dir = train(cfg)
    print(f"run directory: {run_dir}")
    return 0
