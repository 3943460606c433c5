"""Checkpoint files are whole or absent, keep their predecessor, never run code when loaded, and
no resume decision deletes or overwrites what a run already wrote."""

from __future__ import annotations

import csv
import os
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from run_training import ROOT, TINY, tiny_config

import lightning_score.training.reliability
from lightning_score.cli import main
from lightning_score.config import ConfigError, to_dict
from lightning_score.data import build_datamodule
from lightning_score.training.checkpoint import (
    CheckpointError,
    find_resume_checkpoint,
    load_checkpoint,
)
from lightning_score.training.module import ScoreModule
from lightning_score.training.reliability import AtomicCheckpointIO
from lightning_score.training.run import build_trainer, train


def save(io: AtomicCheckpointIO, path: Path, step: int, size: int = 3) -> None:
    """A minimal checkpoint of ours: weights, step and a config."""
    config = to_dict(tiny_config(path.parent))
    ckpt = {
        "state_dict": {"w": torch.full((size,), float(step))},
        "global_step": step,
        "hyper_parameters": {"config": config},
    }
    io.save_checkpoint(ckpt, path)


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

    monkeypatch.setattr(lightning_score.training.reliability.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="no space left on the device to write"):
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
    torch.save({**load_checkpoint(good), "global_step": 4}, run / "hpc_ckpt_1.ckpt")
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


def corrupt_middle(path: Path, nbytes: int = 4096, seed: int = 0) -> None:
    """Random bytes over the middle of the largest tensor's data (a bad disk block, which
    ``torch.load`` reads without complaint); the file's size is unchanged."""
    with zipfile.ZipFile(path) as zf:
        tensors = [i for i in zf.infolist() if "/data/" in i.filename]
        info = max(tensors, key=lambda i: i.file_size)
    with open(path, "r+b") as fh:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", fh.read(4))
        start = info.header_offset + 30 + name_len + extra_len
        nbytes = min(nbytes, info.file_size // 2)
        noise = torch.randint(0, 256, (nbytes,), generator=torch.Generator().manual_seed(seed))
        fh.seek(start + info.file_size // 2 - nbytes // 2)
        fh.write(bytes(noise.to(torch.uint8).tolist()))


def test_random_bytes_inside_a_checkpoint_are_detected(run_dir, tmp_path):
    bad = tmp_path / "bad.ckpt"
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", bad)
    corrupt_middle(bad)
    torch.load(bad, weights_only=True)  # what torch alone does: loads the damaged tensors
    with pytest.raises(CheckpointError, match=r"bad.ckpt .*checksum"):
        load_checkpoint(bad)


def test_a_text_file_is_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("epoch 3: loss went down\n" * 20)
    with pytest.raises(
        CheckpointError, match=r"notes.ckpt is corrupt, truncated or not a checkpoint at all"
    ):
        load_checkpoint(text)


def test_a_valid_zip_that_is_not_our_checkpoint_is_not_rotated_over_the_good_one(tmp_path):
    io, last = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    save(io, last, 1)
    save(io, last, 2)
    torch.save({"something": torch.zeros(2)}, last)  # a whole zip, but not a checkpoint
    save(io, last, 3)
    assert (step_of(last), step_of(tmp_path / "last-prev.ckpt")) == (3, 1)
    (aside,) = tmp_path.glob("last.ckpt.corrupt-*")
    assert "something" in torch.load(aside, weights_only=True)


def test_a_corrupted_file_is_not_rotated_over_the_good_one(tmp_path):
    io, last = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    save(io, last, 1)
    save(io, last, 2, size=4096)
    corrupt_middle(last, 512)
    save(io, last, 3)
    assert (step_of(last), step_of(tmp_path / "last-prev.ckpt")) == (3, 1)
    assert len(list(tmp_path.glob("last.ckpt.corrupt-*"))) == 1


def test_resume_auto_picks_the_newest_step_whatever_the_file_times(tmp_path):
    """A copied run directory (cp -r, rsync, a restore) has meaningless modification times."""
    io, ckpts = AtomicCheckpointIO(), tmp_path / "run" / "checkpoints"
    for step in (500, 1000, 1500):
        save(io, ckpts / f"step{step:07d}.ckpt", step)
    save(io, ckpts / "last.ckpt", 1000)
    save(io, ckpts / "last.ckpt", 1500)  # last-prev.ckpt: step 1000
    for path in ckpts.iterdir():  # all times equal, then the oldest step in the newest file
        os.utime(path, ns=(10**9, 10**9))
    assert find_resume_checkpoint(tmp_path / "run").step == 1500
    for i, path in enumerate(sorted(ckpts.iterdir(), key=lambda p: step_of(p))):
        os.utime(path, ns=(10**9 * (10 - i), 10**9 * (10 - i)))  # oldest step = newest file
    point = find_resume_checkpoint(tmp_path / "run")
    assert (point.step, point.path.name) == (1500, "last.ckpt")


def test_resume_auto_skips_a_corrupted_newest_checkpoint(tmp_path):
    io, ckpts = AtomicCheckpointIO(), tmp_path / "run" / "checkpoints"
    save(io, ckpts / "last.ckpt", 1)
    save(io, ckpts / "last.ckpt", 2, size=4096)
    corrupt_middle(ckpts / "last.ckpt", 512)
    point = find_resume_checkpoint(tmp_path / "run")
    assert (point.path.name, point.step) == ("last-prev.ckpt", 1)
    assert "last.ckpt" in point.skipped[0] and "checksum" in point.skipped[0]


def test_temp_files_of_killed_writers_are_removed_at_start_live_ones_kept(tmp_path):
    """A SIGKILL during a write leaves ``.last.ckpt.*.tmp``; one per kill would pile up."""
    import fcntl

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    orphan = ckpts / ".last.ckpt.abc123.tmp"
    orphan.write_bytes(b"PK half a checkpoint")
    live = ckpts / ".last.ckpt.def456.tmp"
    with open(live, "wb") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # what a writer in another process holds
        fh.write(b"PK being written")
        lightning_score.training.reliability.remove_orphaned_temp_files(ckpts)
        assert live.exists()
    assert not orphan.exists()


def test_a_killed_training_run_leaves_no_temp_file_after_the_rerun(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    orphan = run / "checkpoints" / ".last.ckpt.xyz789.tmp"
    orphan.write_bytes(b"PK half a checkpoint")
    train(tiny_config(tmp_path, "trainer.max_steps=4"))
    assert not orphan.exists()
    assert step_of(run / "checkpoints" / "last.ckpt") == 4


def test_a_checkpoint_config_with_an_unknown_key_names_it(run_dir, tmp_path):
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    ckpt["hyper_parameters"]["config"]["optim"]["momentum"] = 0.9
    path = tmp_path / "future.ckpt"
    torch.save(ckpt, path)
    from lightning_score.training.checkpoint import load_score_model

    with pytest.raises(CheckpointError, match=r"unknown config key 'optim.momentum'"):
        load_score_model(path)


def run_files(run: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_resume_from_another_networks_checkpoint_is_refused_before_anything_is_written(
    run_dir, checkpoint, tmp_path, capsys
):
    """resume= a quickstart (UNet, digits) checkpoint into a toy-2D (MLP) run."""
    run = copy_run(run_dir, tmp_path)
    before = run_files(run)
    argv = ["train", "--config", str(ROOT / "configs" / "toy2d.yaml"), f"out_dir={tmp_path}"]
    assert main([*argv, *TINY, f"resume={checkpoint}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no warning about "changed config" first
    assert "cannot continue this run: its weights do not fit" in err
    assert "model.name: 'mlp' -> 'unet'" not in err  # saved -> current: the checkpoint's is unet
    assert "model.name: 'unet' -> 'mlp'" in err and "data.name: 'digits' -> 'toy2d'" in err
    assert run_files(run) == before  # config.yaml, metrics.csv, checkpoints: all untouched


def test_resume_with_a_changed_learning_rate_trains_at_that_rate(run_dir, tmp_path):
    """The optimizer state in the checkpoint holds the old lr: the config's must win."""
    run = copy_run(run_dir, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    changed = ("optim.lr=5e-4", "optim.weight_decay=0.01", "trainer.max_steps=5")
    with pytest.warns(UserWarning, match=r"changed config: optim.lr: 0.002 -> 0.0005"):
        train(tiny_config(tmp_path, f"resume={last}", *changed))
    ckpt = load_checkpoint(last)
    assert ckpt["global_step"] == 5
    (group,) = ckpt["optimizer_states"][0]["param_groups"]
    warmup = 100  # configs/toy2d.yaml: lr x min((step + 1) / warmup, 1)
    assert group["lr"] == pytest.approx(5e-4 * 6 / warmup, rel=1e-12)
    assert group["weight_decay"] == 0.01
    assert ckpt["lr_schedulers"][0]["base_lrs"] == [5e-4]
    # the rate each update really used, as the LR monitor logged it before the update
    with open(run / "logs" / "metrics.csv", newline="") as fh:
        rates = {int(r["step"]): float(r["lr-Adam"]) for r in csv.DictReader(fh) if r["lr-Adam"]}
    assert rates[2] == pytest.approx(2e-3 * 3 / warmup)  # before the resume: the old rate
    assert rates[3] == pytest.approx(5e-4 * 4 / warmup) and rates[4] == pytest.approx(
        5e-4 * 5 / warmup
    )
    assert "lr: 0.0005" in (run / "config.yaml").read_text()
