"""Preemption: a run killed mid-way and rerun continues exactly like an uninterrupted one.

The killed run is a subprocess (``tests/run_training.py``) stopped by SIGKILL after 6 of 12
steps, mid-epoch (5 batches an epoch). Everything runs on the CPU with deterministic kernels, so
model, EMA and optimizer states after 12 steps must be bit-identical, not merely close.
"""

from __future__ import annotations

import csv
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
from test_checkpoint_safety import corrupt_middle

from lightning_score.training.checkpoint import CheckpointError, load_checkpoint
from lightning_score.training.reliability import PREEMPTED_EXIT_CODE
from lightning_score.training.run import train

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


#: wall-clock throughput: the one column two runs of the same steps cannot share
TIMING = "train/samples_per_s"


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    """``logs/metrics.csv`` in file order, without the timing column."""
    with open(run_dir / "logs" / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k != TIMING} for row in csv.DictReader(fh)]


def assert_same_log(got: Path, want: Path) -> None:
    """Every row of every step, equal: the interrupted run's log is the uninterrupted one's."""
    a, b = metric_rows(got), metric_rows(want)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert a == b


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
    # the log of the killed run is continued, not replaced: all 12 steps, as if never killed
    assert_same_log(tmp_path / "toy2d", reference.parents[1])


def test_truncated_last_checkpoint_falls_back_to_the_previous_one(runs, tmp_path):
    reference, killed = runs
    shutil.copytree(killed, tmp_path, dirs_exist_ok=True)
    ckpts = tmp_path / "toy2d" / "checkpoints"
    last = ckpts / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=r"last.ckpt is corrupt, truncated or not a checkpoint"
    ):
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


def test_random_bytes_in_last_checkpoint_resume_from_the_newest_that_verifies(runs, tmp_path):
    """Kill, then damage ``last.ckpt`` inside a tensor (a bad block; the zip stays whole)."""
    reference, killed = runs
    shutil.copytree(killed, tmp_path, dirs_exist_ok=True)
    ckpts = tmp_path / "toy2d" / "checkpoints"
    corrupt_middle(ckpts / "last.ckpt")
    damaged = (ckpts / "last.ckpt").read_bytes()
    with pytest.warns(UserWarning, match=r"resume=auto: passing over .*last.ckpt is damaged"):
        train(tiny_config(tmp_path))
    # replayed steps 4..12 from last-prev.ckpt (step 3): the same end state and the same log
    assert_same_training_state(ckpts / "last.ckpt", reference)
    assert_same_log(tmp_path / "toy2d", reference.parents[1])
    (aside,) = ckpts.glob("last.ckpt.corrupt-*")  # kept aside, not rotated over a good file
    assert aside.read_bytes() == damaged


def test_sigterm_then_rerun_continues_the_log_as_if_never_stopped(runs, tmp_path):
    reference, _ = runs
    proc = start_run(tmp_path, "--hang-at", "4", "checkpoint.every_n_steps=100")
    wait_for(proc, tmp_path / "hanging")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == PREEMPTED_EXIT_CODE, proc.stderr.read()[-3000:]
    train(tiny_config(tmp_path, "checkpoint.every_n_steps=100"))
    assert_same_training_state(tmp_path / "toy2d" / "checkpoints" / "last.ckpt", reference)
    assert_same_log(tmp_path / "toy2d", reference.parents[1])


def test_resume_with_loader_workers_and_random_flips_is_exact(tmp_path):
    """With ``data.num_workers > 0`` the flips are drawn in worker processes, whose RNGs a
    checkpoint cannot hold: the draws must depend on the batch's position alone. And the
    workers draw what the main process would: the run equals the one without workers."""
    from tiny_checkpoint import ROOT

    from lightning_score.experiment import load_config

    def cfg(out: Path, *extra: str):
        overrides = [
            f"out_dir={out}",
            "data.random_flip=true",
            "model.kwargs.channels=[8,16]",
            "data.batch_size=32",
            "trainer.val_check_interval=100",
            "trainer.deterministic=true",
            "checkpoint.every_n_steps=100",
            "sample_grid.every_n_steps=100",
            "evaluation.every_n_steps=0",
            *extra,
        ]
        return load_config(ROOT / "configs" / "quickstart.yaml", overrides)

    workers = "data.num_workers=2"
    whole = train(cfg(tmp_path / "whole", workers, "trainer.max_steps=6"))
    train(cfg(tmp_path / "split", workers, "trainer.max_steps=3"))  # digits: 51 batches an epoch
    split = train(cfg(tmp_path / "split", workers, "trainer.max_steps=6"))
    main_process = train(cfg(tmp_path / "main", "trainer.max_steps=6"))
    a = load_checkpoint(whole / "checkpoints" / "last.ckpt")
    for other in (split, main_process):
        b = load_checkpoint(other / "checkpoints" / "last.ckpt")
        assert max_abs_diff(a["state_dict"], b["state_dict"]) == 0.0
        assert max_abs_diff(a["current_model_state"], b["current_model_state"]) == 0.0
