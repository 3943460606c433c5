"""The per-rank shards of a sharded ``lscore sample`` run, joined into one ``.npz`` for
``lscore evaluate``.

Rank r of W writes ``samples_rank{r:02d}.npz`` (``arr_0``) and ``samples_rank{r:02d}.json`` (its
settings: checkpoint, seed, sampler, rank, world size, count). A merge checks that every rank is
there exactly once, that all shards were drawn with the same settings (so that no two ranks
repeat noise and the union is one experiment), and concatenates them in rank order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_score.outputs import atomic_path, write_text

SHARD_GLOB = "samples_rank*.npz"
#: settings that must agree across the shards of one run
SHARED_KEYS = ("checkpoint", "ema", "seed", "world_size", "sampling")


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
    meta = json.loads(meta_path.read_text())
    with np.load(path, allow_pickle=False) as data:
        if "arr_0" not in data.files:
            raise ShardError(f"{path} holds {data.files}, expected samples under 'arr_0'")
        samples = data["arr_0"]
    if len(samples) != meta.get("num"):
        raise ShardError(f"{path} holds {len(samples)} samples, its JSON says {meta.get('num')}")
    return samples, meta


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
                "one run share checkpoint, seed, sampler and world size"
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
