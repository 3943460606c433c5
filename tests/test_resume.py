"""Preemption: a run killed mid-way and rerun continues exactly like an uninterrupted one.

The killed run is a subprocess (``tests/run_training.py``) stopped by SIGKILL after 6 of 12
steps, mid-epoch (5 batches an epoch). Everything runs on the CPU with deterministic kernels, so
model, EMA and optimizer states after 12 steps must be bit-identical, not merely close.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from run_training import tiny_config

from lightning_score.checkpoint import CheckpointError, load_checkpoint
from lightning_score.reliability import PREEMPTED_EXIT_CODE
from lightning_score.train import train

SCRIPT = Path(__file__).with_name("run_training.py")


def start_run(out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), *args],
        cwd=SCRIPT.parents[1],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(proc: subprocess.Popen, marker: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("training did not reach the hang point")
        time.sleep(0.1)


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def assert_same_training_state(got: Path, want: Path) -> None:
    a, b = load_checkpoint(got), load_checkpoint(want)
    assert a["global_step"] == b["global_step"] == 12
    assert max_abs_diff(a["state_dict"], b["state_dict"]) == 0.0  # EMA weights
    assert max_abs_diff(a["current_model_state"], b["current_model_state"]) == 0.0  # raw weights
    assert max_abs_diff(a["averaging_state"], b["averaging_state"]) == 0.0
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for i in sa["state"]:
            assert max_abs_diff(sa["state"][i], sb["state"][i]) == 0.0
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert a["loops"]["fit_loop"]["state_dict"] == b["loops"]["fit_loop"]["state_dict"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """12 uninterrupted steps (last.ckpt), and the run dir of the same run SIGKILLed after step
    6 (checkpoints every 3 steps); the two run side by side."""
    killed = tmp_path_factory.mktemp("killed")
    proc = start_run(killed, "--hang-at", "6")
    reference = train(tiny_config(tmp_path_factory.mktemp("uninterrupted")))
    wait_for(proc, killed / "hanging")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    return reference / "checkpoints" / "last.ckpt", killed


def test_rerun_after_sigkill_matches_uninterrupted_run(runs, tmp_path):
    reference, killed = runs
    shutil.copytree(killed, tmp_path, dirs_exist_ok=True)
    assert load_checkpoint(tmp_path / "toy2d" / "checkpoints" / "last.ckpt")["global_step"] == 6
    train(tiny_config(tmp_path))  # the same command again: resume=auto is the default
    assert_same_training_state(tmp_path / "toy2d" / "checkpoints" / "last.ckpt", reference)


def test_truncated_last_checkpoint_falls_back_to_the_previous_one(runs, tmp_path):
    reference, killed = runs
    shutil.copytree(killed, tmp_path, dirs_exist_ok=True)
    ckpts = tmp_path / "toy2d" / "checkpoints"
    last = ckpts / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last.ckpt is corrupt, truncated or not a weights"):
        load_checkpoint(last)
    assert load_checkpoint(ckpts / "last-prev.ckpt")["global_step"] == 3

    with pytest.warns(UserWarning, match=r"resume=auto: passing over .*last.ckpt is corrupt"):
        train(tiny_config(tmp_path, "resume=auto"))
    # replayed steps 4..12 from step 3: the same end state
    assert_same_training_state(last, reference)
    # the truncated file was set aside, not deleted
    (corrupt,) = ckpts.glob("last.ckpt.corrupt-*")
    assert corrupt.read_bytes() == data[: len(data) // 2]


def test_sigterm_saves_a_checkpoint_and_exits_for_requeue(tmp_path):
    proc = start_run(tmp_path, "--hang-at", "4", "checkpoint.every_n_steps=100")
    wait_for(proc, tmp_path / "hanging")
    assert not (tmp_path / "toy2d" / "checkpoints" / "last.ckpt").exists()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == PREEMPTED_EXIT_CODE, proc.stderr.read()[-3000:]
    # Lightning finishes the batch under way, then the checkpoint callback saves it
    assert load_checkpoint(tmp_path / "toy2d" / "checkpoints" / "last.ckpt")["global_step"] == 5


def test_sigterm_during_validation_saves_raw_and_ema_weights_in_their_places(tmp_path):
    # Validation runs on the EMA weights swapped into the model; the save must swap them back.
    args = ("checkpoint.every_n_steps=100", "trainer.limit_val_batches=2", "data.val_fraction=0.5")
    proc = start_run(tmp_path / "stopped", "--hang-at", "4", "--in-validation", *args)
    want = train(tiny_config(tmp_path / "reference", "trainer.max_steps=4", *args))
    wait_for(proc, tmp_path / "stopped" / "hanging")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == PREEMPTED_EXIT_CODE, proc.stderr.read()[-3000:]
    a = load_checkpoint(tmp_path / "stopped" / "toy2d" / "checkpoints" / "last.ckpt")
    b = load_checkpoint(want / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 4
    assert max_abs_diff(a["state_dict"], b["state_dict"]) == 0.0
    assert max_abs_diff(a["current_model_state"], b["current_model_state"]) == 0.0
