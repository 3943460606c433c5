"""``lscore prepare SOURCE --root DIR --out DIR_OR_URI``: a data set as LitData chunks.

Writes the train and val splits of CIFAR-10 (torchvision's pickles), CelebA (center crop 140,
resized to 64 as the configs do), LSUN (lmdb, resized and center-cropped to 256), an image
folder (labels from class subfolders; 1% held out for validation) or Fashion-MNIST (IDX) as
uint8 chunks with labels into ``OUT/train`` and ``OUT/val``, a folder or an s3:// gs:// URI.
Train on them with ``data.name=streaming data.input_dir=OUT``. Run again after a kill, it keeps
the complete splits and carries on where the workers stopped (local outputs).
"""

from __future__ import annotations

import argparse

from lightning_score.commands.options import number

#: the keys of lightning_score.data.prepare.SOURCES, listed here so that --help needs no torch
SOURCE_NAMES = ("cifar10", "celeba", "lsun", "folder", "fashion_mnist")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=SOURCE_NAMES, help="the data set's format")
    parser.add_argument("--root", required=True, help="where the source lies (as data.root)")
    parser.add_argument("--out", required=True, help="output folder or s3:// gs:// URI")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resize and center-crop to N x N (default: 64 for CelebA, 256 for LSUN, else as stored)",
    )
    parser.add_argument(
        "--categories", nargs="+", default=["bedroom"], help="LSUN categories (as data.categories)"
    )
    parser.add_argument(
        "--val-fraction",
        type=number(float, above=0, at_most=1),
        default=0.01,
        help="folder: share held out for validation",
    )
    parser.add_argument("--seed", type=int, default=0, help="folder: seed of the val split")
    parser.add_argument(
        "--bad-images",
        choices=["stop", "skip"],
        default="stop",
        help="image files that cannot be read: stop naming the file, or leave them out",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--chunk-bytes", default="64MB", help="size of one chunk")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bar with count and ETA",
    )


def run(args: argparse.Namespace) -> int:
    from lightning_score.data.prepare import SOURCES, PrepareError, Source, prepare

    size = SOURCES[args.source] if args.image_size is None else args.image_size
    if size < 0 or args.workers < 1 or not 0 < args.val_fraction < 1:
        raise PrepareError(
            "--image-size must be >= 0, --workers >= 1 and --val-fraction in (0, 1) "
            "(streaming runs read a val split)"
        )
    source = Source(
        args.source,
        args.root,
        train=True,
        image_size=size,
        categories=tuple(args.categories),
        val_fraction=args.val_fraction,
        seed=args.seed,
        bad_images=args.bad_images,
    )
    done = prepare(source, args.out, args.workers, args.chunk_bytes, args.progress)
    for split, what in done.items():
        print(f"{split}: {what}")
    print(f"next: lscore train CONFIG data.name=streaming data.input_dir={args.out}")
    return 0
