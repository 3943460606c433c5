"""``lscore train-classifier [--config PATH] [--dry-run] key=value ...``: train a noise-conditional
classifier p_t(y | x_t) for classifier guidance (``lscore sample-classes --classifier``)."""

from __future__ import annotations

import argparse

DEFAULT_CONFIG = "configs/classifier/digits.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG})")
    parser.add_argument(
        "--dry-run", action="store_true", help="resolve and validate the config, print it, stop"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides as key=value")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lightning_score.config import ClassifierConfig, check_name_and_seed, read_config

    path = args.config
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    raw = read_config(path, args.overrides, ClassifierConfig)
    check_name_and_seed(raw.name, raw.seed)  # before torch is imported

    from omegaconf import OmegaConf

    from lightning_score.conditioning.classifier import (
        load_classifier,
        train_classifier,
        validate_classifier_config,
        validation_accuracy,
    )

    cfg = validate_classifier_config(raw)
    if args.dry_run:
        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        return 0
    run_dir = train_classifier(cfg)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    classifier, _ = load_classifier(checkpoint)
    accuracy = validation_accuracy(classifier, cfg)
    print(f"clean validation accuracy {accuracy:.4f}; checkpoint: {checkpoint}")
    return 0
