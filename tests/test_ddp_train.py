"""2-process CPU DDP training (gloo), run as users run it: a subprocess script that Lightning's
launcher starts a second time for rank 1."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from run_training import run_two_process_ddp

from lightning_score.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    run_two_process_ddp(out, "--record-batches")
    return out


def test_each_rank_trains_on_its_own_shard_with_its_own_noise(ddp_run):
    r0, r1 = (torch.load(ddp_run / f"record_rank{r}.pt") for r in (0, 1))
    b0, b1 = r0["batches"], r1["batches"]
    assert b0.shape == b1.shape == (12, 32, 2)  # global batch 64 split over 2 ranks
    # epoch 0 (5 steps): the two shards are disjoint and together cover 320 distinct points
    epoch0 = torch.cat([b0[:5].reshape(-1, 2), b1[:5].reshape(-1, 2)])
    assert torch.unique(epoch0, dim=0).shape[0] == 320
    assert not torch.equal(r0["times"], r1["times"])


def test_checkpoints_logs_and_samples_are_written_once(ddp_run):
    r0, r1 = (torch.load(ddp_run / f"record_rank{r}.pt") for r in (0, 1))
    assert r0["writes"] == ["last.ckpt"] * 4 and r1["writes"] == []  # steps 3, 6, 9, 12
    run = ddp_run / "toy2d"
    written = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert written == ["last-prev.ckpt", "last.ckpt"]
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 12
    with open(run / "logs" / "metrics.csv") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh) if r["train/loss"]]
    assert steps == list(range(12))  # one row per step, not one per rank
    assert [p.name for p in (run / "samples").iterdir()] == ["samples_step0000012.png"]
