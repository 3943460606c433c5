"""``lscore merge DIR [--out FILE]``: join the shards of a sharded ``lscore sample`` run.

Each rank of ``lscore sample --world-size W --rank r --out DIR`` writes ``samples_rank{r}.npz``;
this checks that all W ranks are present with the same settings and writes them, in rank order, as
one ``.npz`` (default ``DIR/samples.npz``) that ``lscore evaluate`` takes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_score.outputs import OutputError, add_overwrite_argument, check_outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=Path, help="the --out directory of the sharded run")
    parser.add_argument(
        "--out", type=Path, default=None, help="merged .npz (default: DIRECTORY/samples.npz)"
    )
    add_overwrite_argument(parser)


def run(args: argparse.Namespace) -> int:
    from lightning_score.sampling.shards import SHARD_GLOB, merge_shards, shard_files, write_merged

    out = args.out or args.directory / "samples.npz"
    outputs = [out, out.with_suffix(".json")]
    check_outputs(outputs, args.overwrite, inputs=shard_files(args.directory))
    if out.parent.resolve() == args.directory.resolve() and out.match(SHARD_GLOB):
        raise OutputError(
            f"{out} would be taken for a shard by the next merge: name the output otherwise"
        )
    merged = merge_shards(args.directory)
    write_merged(merged, out)
    record = merged.record
    print(
        f"{record['num']} samples from {len(record['shards'])} ranks -> {out} "
        f"(evaluate: lscore evaluate {out} --data-config CONFIG)"
    )
    return 0
