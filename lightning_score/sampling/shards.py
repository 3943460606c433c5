"""The per-rank shards of a sharded ``lscore sample`` run, joined into one ``.npz`` for
``lscore evaluate``.

Rank r of W writes ``samples_rank{r:02d}.npz`` (``arr_0``) and ``samples_rank{r:02d}.json`` (its
settings: checkpoint, the weights' step, SHA-256 and EMA / raw, seed, sampler, rank, world size,
count). A merge checks that every rank is there exactly once, that all shards were drawn from the
same weights with the same settings (so that no two ranks repeat noise and the union is one
experiment), and concatenates them in rank order. A shard that cannot be read, or whose JSON
lacks an entry, is refused in one line naming the file.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_score.outputs import atomic_path, write_text

SHARD_GLOB = "samples_rank*.npz"
#: settings that must agree across the shards of one run
SHARED_KEYS = ("checkpoint", "step", "weights_sha256", "ema", "seed", "world_size", "sampling")
#: entries every shard JSON must hold
REQUIRED_KEYS = ("rank", "world_size", "num", "seed", "checkpoint")


class ShardError(ValueError):
    """The shards do not form one complete run; the message says what is missing or differs."""


@dataclass
class MergedShards:
    """All samples in rank order and the merged record (what ``merge.json`` holds)."""

    samples: np.ndarray
    record: dict[str, Any]


def _read_shard(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise ShardError(
            f"{path} has no {meta_path.name} beside it: was it written by lscore sample?"
        )
    rerun = "rerun `lscore sample` for that rank with --overwrite"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise ShardError(f"{meta_path} is not readable JSON ({err}): {rerun}") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ShardError(
            f"{meta_path} lacks {', '.join(missing)}: it was not written by `lscore sample`; "
            f"{rerun}"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            names = data.files
            samples = data["arr_0"] if "arr_0" in names else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ShardError(
            f"{path} is truncated or not an .npz of samples ({type(err).__name__}): {rerun}"
        ) from None
    if samples is None:
        raise ShardError(f"{path} holds {names}, expected samples under 'arr_0'")
    if len(samples) != meta.get("num"):
        raise ShardError(f"{path} holds {len(samples)} samples, its JSON says {meta.get('num')}")
    return samples, meta


def shard_files(directory: Path) -> list[Path]:
    """The shards of ``directory`` and the JSON beside each: what a merge reads."""
    shards = sorted(Path(directory).glob(SHARD_GLOB))
    return [*shards, *(p.with_suffix(".json") for p in shards)]


def merge_shards(directory: Path) -> MergedShards:
    """The shards ``samples_rank*.npz`` of ``directory`` as one array (rank 0 first)."""
    paths = sorted(Path(directory).glob(SHARD_GLOB))
    if not paths:
        raise ShardError(
            f"no {SHARD_GLOB} in {directory}: run `lscore sample CKPT --out {directory} "
            "--world-size W --rank r` for every rank r first"
        )
    shards = [_read_shard(p) for p in paths]
    first = shards[0][1]
    for path, (_, meta) in zip(paths, shards, strict=True):
        differ = [k for k in SHARED_KEYS if meta.get(k) != first.get(k)]
        if differ:
            raise ShardError(
                f"{path.name} differs from {paths[0].name} in {', '.join(differ)}: the shards of "
                "one run share weights (checkpoint, step, SHA-256, EMA), seed, sampler and world "
                "size; rerun the odd ranks with the same checkpoint and flags"
            )
    world = int(first["world_size"])
    ranks = [int(meta["rank"]) for _, meta in shards]
    missing = sorted(set(range(world)) - set(ranks))
    repeated = sorted({r for r in ranks if ranks.count(r) > 1})
    if missing or repeated or len(ranks) != world:
        raise ShardError(
            f"{directory} holds ranks {sorted(ranks)} of a {world}-rank run"
            + (f"; missing {missing}: rerun those ranks" if missing else "")
            + (f"; repeated {repeated}" if repeated else "")
        )
    ordered = sorted(zip(ranks, paths, shards, strict=True), key=lambda item: item[0])
    arrays = [samples for _, _, (samples, _) in ordered]
    if len({(a.dtype, a.shape[1:]) for a in arrays}) != 1:
        raise ShardError(f"the shards in {directory} hold samples of different shapes or types")
    metas = [meta for _, _, (_, meta) in ordered]
    record = {
        **{k: first[k] for k in SHARED_KEYS if k in first},
        "num": int(sum(len(a) for a in arrays)),
        "nfe": float(np.mean([m["nfe"] for m in metas]))
        if all("nfe" in m for m in metas)
        else None,
        "seconds": float(sum(m.get("seconds", 0.0) for m in metas)),
        "shards": [p.name for _, p, _ in ordered],
    }
    return MergedShards(np.concatenate(arrays), record)


def write_merged(merged: MergedShards, out: Path) -> None:
    """``out`` (``arr_0``, what ``lscore evaluate`` reads) and its record beside it as JSON, each
    written whole or not at all."""
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:  # np.savez would add ".npz" to a name
        np.savez(fh, merged.samples)
    write_text(out.with_suffix(".json"), json.dumps(merged.record, indent=2))
