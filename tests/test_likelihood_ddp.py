"""`lscore likelihood` under torchrun: 2 CPU processes (gloo) give the 1-process numbers.

Each point's dequantization and probes are seeded by its data index and each rank solves whole
single-process batches, so the gathered bits/dim are those of one process, bit for bit. The
ranks get different numbers of batches (and of adaptive solver steps): a collective inside the
solve would hang here, and the run has a timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from lightning_score.cli import main
from lightning_score.evaluation.distributed import Ranks, shard_batches
from lightning_score.evaluation.likelihood import BitsPerDim, merge_bits_per_dim

ROOT = Path(__file__).resolve().parents[1]
# --num-points: torchrun's own parser would take --num as an abbreviation of --numa-binding.
# 3 batches of 2: rank 0 solves two, rank 1 one.
ARGS = [
    "--num-points",
    "6",
    "--batch-size",
    "2",
    "--repeats",
    "2",
    "--rtol",
    "1e-2",
    "--atol",
    "1e-2",
]


def test_two_processes_equal_one(checkpoint: Path, tmp_path: Path) -> None:
    one = tmp_path / "one.json"
    assert main(["likelihood", str(checkpoint), *ARGS, "--out", str(one)]) == 0
    two = tmp_path / "two.json"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    command = ["-m", "lightning_score.cli", "likelihood", str(checkpoint), *ARGS, "--out", str(two)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [*torchrun, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world_size"], b["world_size"]) == (1, 2)
    for key in ("points", "bpd", "bpd_stderr", "bpd_estimator_stderr", "nfe"):
        assert a[key] == b[key], key
    assert a["points"] == 6
    assert proc.stdout.count("bits/dim") == 1  # rank 0 reports, rank 1 stays quiet


def test_batches_are_dealt_round_robin_and_cover_the_data_once() -> None:
    shards = [shard_batches(10, 4, Ranks(r, 2)) for r in range(2)]
    assert shards == [[0, 1, 2, 3, 8, 9], [4, 5, 6, 7]]
    three = [shard_batches(11, 2, Ranks(r, 3)) for r in range(3)]
    assert sorted(i for s in three for i in s) == list(range(11))
    assert shard_batches(3, 4, Ranks(1, 2)) == []  # a rank may get nothing


def test_merge_orders_columns_by_data_index() -> None:
    a = BitsPerDim(torch.tensor([[1.0, 2.0]]), torch.tensor([0, 2]), nfe_total=30, solves=1)
    b = BitsPerDim(torch.tensor([[3.0]]), torch.tensor([1]), nfe_total=10, solves=1)
    merged = merge_bits_per_dim([a, b])
    assert merged.values.tolist() == [[1.0, 3.0, 2.0]] and merged.indices.tolist() == [0, 1, 2]
    assert merged.nfe == 20.0
