"""Checkpoint files are whole or absent, keep their predecessor, never run code when loaded, and
no resume decision deletes or overwrites what a run already wrote."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from run_training import tiny_config

import lightning_score.reliability
from lightning_score.checkpoint import CheckpointError, find_resume_checkpoint, load_checkpoint
from lightning_score.config import ConfigError
from lightning_score.data import build_datamodule
from lightning_score.module import ScoreModule
from lightning_score.reliability import AtomicCheckpointIO
from lightning_score.train import build_trainer, train


def save(io: AtomicCheckpointIO, path: Path, step: int) -> None:
    io.save_checkpoint(
        {"state_dict": {"w": torch.full((3,), float(step))}, "global_step": step}, path
    )


def step_of(path: Path) -> int:
    return load_checkpoint(path)["global_step"]


def test_overwriting_keeps_the_previous_checkpoint(tmp_path):
    io, last = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    for step in (1, 2, 3):
        save(io, last, step)
    assert (step_of(last), step_of(tmp_path / "last-prev.ckpt")) == (3, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last-prev.ckpt", "last.ckpt"]


def test_a_write_that_fails_half_way_leaves_the_old_file(tmp_path, monkeypatch):
    io, last = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    save(io, last, 1)

    def disk_full(obj, fh) -> None:
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lightning_score.reliability.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save(io, last, 2)
    assert step_of(last) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file, no rotation


def test_a_truncated_file_is_set_aside_not_rotated_over_the_good_previous_one(tmp_path):
    io, last = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    save(io, last, 1)
    save(io, last, 2)
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    save(io, last, 3)
    assert (step_of(last), step_of(tmp_path / "last-prev.ckpt")) == (3, 1)
    (corrupt,) = tmp_path.glob("last.ckpt.corrupt-*")
    assert corrupt.read_bytes() == data[: len(data) // 2]


def test_remove_checkpoint_never_deletes(tmp_path):
    io, last = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    save(io, last, 1)
    io.remove_checkpoint(last)
    assert step_of(last) == 1


class RunsCode:
    """Unpickling this creates ``marker``: what a malicious checkpoint could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real 3-step run: checkpoints/last.ckpt at step 3."""
    return train(tiny_config(tmp_path_factory.mktemp("run"), "trainer.max_steps=3"))


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir.parent, dest, dirs_exist_ok=True)
    return dest / run_dir.name


def test_no_load_path_unpickles_code(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "out")
    marker = tmp_path / "code-ran"
    evil = run / "checkpoints" / "evil.ckpt"
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    torch.save({**ckpt, "payload": RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError, match="not a weights-only checkpoint"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="not a weights-only checkpoint"):
        AtomicCheckpointIO().load_checkpoint(evil, weights_only=False)
    cfg = tiny_config(tmp_path / "out", "trainer.max_steps=6")
    with pytest.raises(CheckpointError, match="not a weights-only checkpoint"):
        train(tiny_config(tmp_path / "out", f"resume={evil}"))
    # Lightning's own resume path, even when asked for weights_only=False
    trainer = build_trainer(cfg)
    with pytest.raises(CheckpointError, match="not a weights-only checkpoint"):
        trainer.fit(
            ScoreModule.from_config(cfg),
            datamodule=build_datamodule(cfg.data),
            ckpt_path=evil,
            weights_only=False,
        )
    assert not marker.exists()


def test_resume_auto_passes_over_broken_files_and_says_why(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    ckpts = run / "checkpoints"
    good = ckpts / "last.ckpt"
    (ckpts / "newer.ckpt").write_bytes(good.read_bytes()[:1000])
    os.utime(good, ns=(1, 1))
    point = find_resume_checkpoint(run)
    assert point is not None and (point.path, point.step) == (good, 3)
    assert len(point.skipped) == 1 and "newer.ckpt is corrupt, truncated" in point.skipped[0]
    # Lightning's SLURM requeue checkpoint (hpc_ckpt_N.ckpt in the run directory) counts too
    shutil.copy(good, run / "hpc_ckpt_1.ckpt")
    assert find_resume_checkpoint(run).path == run / "hpc_ckpt_1.ckpt"


def test_resume_auto_with_no_loadable_checkpoint_is_a_clear_error(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"no checkpoint of .* can be resumed from: .*last"):
        train(tiny_config(tmp_path))
    assert last.read_bytes() == data[: len(data) // 2]


def test_resume_none_refuses_a_run_directory_that_holds_checkpoints(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    with pytest.raises(ConfigError, match=r"already holds checkpoints .*resume=auto continues"):
        train(tiny_config(tmp_path, "resume=none"))
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before


def test_resume_auto_refuses_a_run_with_a_different_config(run_dir, tmp_path):
    copy_run(run_dir, tmp_path)
    with pytest.raises(ConfigError, match=r"different config \(optim.lr: 0.002 -> 0.001\)"):
        train(tiny_config(tmp_path, "optim.lr=1e-3"))
