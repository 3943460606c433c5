"""``lscore export CKPT --format safetensors|diffusers --out DIR``: the model where the ecosystem is.

``safetensors``: ``model.safetensors`` (EMA weights; ``--raw`` for the raw ones) with the resolved
config in its metadata, ``config.json`` and a model card ``README.md``; every ``lscore`` command
takes the folder (or the file) as its checkpoint. ``diffusers``: a folder diffusers'
``from_pretrained`` loads, for models that map exactly onto ``UNet2DModel`` and a scheduler;
others are refused with the reason (see ``lightning_score.interop.export``). A folder that already holds
files is kept unless ``--overwrite`` is given, and never one that holds the input.

``--push-to-hub OWNER/NAME`` uploads the folder to the Hugging Face Hub (``huggingface_hub``),
its model card loading from that repo; without a token or in offline mode it is refused before
anything is written (``lightning_score.interop.hub``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_score.outputs import add_overwrite_argument, check_output_folder

FORMATS = ("safetensors", "diffusers")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a training checkpoint (.ckpt) or an export")
    parser.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        dest="fmt",
        help="safetensors (weights, config and model card; every command loads it) or diffusers "
        "(a UNet2DModel folder with its scheduler, for models that map exactly)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--raw", action="store_true", help="export the raw weights instead of the EMA ones"
    )
    parser.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        default=None,
        help="upload the export to this Hugging Face Hub repo (OWNER/NAME; needs a token: "
        "`hf auth login` or HF_TOKEN)",
    )
    parser.add_argument(
        "--private", action="store_true", help="with --push-to-hub: create the repo private"
    )
    add_overwrite_argument(parser)


def run(args: argparse.Namespace) -> int:
    from lightning_score.interop.export import export
    from lightning_score.run_lock import run_lock

    check_output_folder(args.out, args.overwrite, inputs=[Path(args.checkpoint)])
    if args.push_to_hub:
        from lightning_score.interop.hub import check_publishable

        check_publishable(args.push_to_hub)
    with run_lock(args.out, "lscore export"):  # one writer per folder
        path = export(args.checkpoint, args.fmt, args.out, raw=args.raw, repo_id=args.push_to_hub)
    weights = "raw" if args.raw else "EMA"
    print(f"wrote {args.fmt} export ({weights} weights) -> {path}")
    if args.push_to_hub:
        from lightning_score.interop.hub import push_to_hub

        url = push_to_hub(args.out, args.push_to_hub, private=args.private)
        print(f"pushed {args.out} -> {url}")
    return 0
