"""Training runs under hostile conditions (issue 18): one writer per run directory, Ctrl-C, a kill
inside a checkpoint write, a full disk, classifier checkpoints, config values that used to pass
the dry run, and the ``train.py`` entry point."""

from __future__ import annotations

import csv
import errno
import io
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from run_training import ROOT, tiny_config
from test_resume import wait_for

from lightning_score.cli import main
from lightning_score.config import to_dict
from lightning_score.run_lock import LOCK_FILE, RunDirectoryLocked, run_lock
from lightning_score.training.checkpoint import CheckpointError, load_checkpoint
from lightning_score.training.reliability import (
    INTERRUPTED_EXIT_CODE,
    AtomicCheckpointIO,
)
from lightning_score.training.run import train

SCRIPT = Path(__file__).with_name("run_training.py")
TOY = ["--config", str(ROOT / "configs" / "toy2d.yaml")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def start_run(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), *args],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def hold_lock(directory: Path, ready: Path) -> subprocess.Popen:
    """Another process holding the lock of ``directory`` until killed."""
    code = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from lightning_score.run_lock import run_lock
        with run_lock(Path({str(directory)!r}), "lscore train"):
            Path({str(ready)!r}).write_text("locked")
            time.sleep(600)
        """
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=ENV, text=True)


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# -- one writer per run directory (item 2) --------------------------------------------------------
def test_a_live_run_holds_its_directory_and_a_kill_9_frees_it(tmp_path, capsys):
    """A second ``lscore train`` on the directory of a live run is refused in one line naming the
    live run's PID, and changes nothing; once that run is SIGKILLed, the rerun continues it."""
    proc = start_run(tmp_path, "--hang-at", "4")
    try:
        wait_for(proc, tmp_path / "hanging")
        run_dir = tmp_path / "toy2d"
        before = sorted((run_dir / "checkpoints").iterdir())
        code = main(["train", *TOY, f"out_dir={tmp_path}", "trainer.max_steps=12"])
        line = error_line(capsys)
        assert code == 2
        assert f"{run_dir} is in use by another process (PID {proc.pid}, lscore train)" in line
        assert sorted((run_dir / "checkpoints").iterdir()) == before
    finally:
        proc.kill()
        proc.wait()
    # the kernel released the lock with the process: the next writer takes the directory
    with run_lock(run_dir, "test"):
        assert (run_dir / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    assert not (run_dir / LOCK_FILE).exists()  # removed when its holder ends


def test_a_forked_child_does_not_keep_the_lock_after_its_holder_dies(tmp_path):
    """DataLoader workers are forked children of the run: a holder killed with -9 while its
    child lives on (as a worker does until it notices) must not keep the directory locked."""
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from lightning_score.run_lock import run_lock
        with run_lock({str(tmp_path)!r}, "holder"):
            if os.fork() == 0:  # the child outlives its parent by far
                time.sleep(30)
                os._exit(0)
            print("locked", flush=True)
            time.sleep(30)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryLocked), run_lock(tmp_path, "test"):
            pass
        proc.kill()
        proc.wait()
        with run_lock(tmp_path, "test"):  # the child still sleeps, the lock is free
            assert (tmp_path / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    finally:
        proc.kill()
        subprocess.run(["pkill", "-f", "the child outlives its parent"], check=False)


def test_train_classifier_and_export_are_refused_on_a_locked_directory(
    tmp_path, checkpoint, capsys
):
    ready = tmp_path / "ready"
    holder = hold_lock(tmp_path / "cls" / "x", ready)
    export_holder = hold_lock(tmp_path / "export", tmp_path / "ready2")
    try:
        while not (ready.exists() and (tmp_path / "ready2").exists()):
            assert holder.poll() is None and export_holder.poll() is None
            time.sleep(0.05)
        code = main(["train-classifier", f"out_dir={tmp_path / 'cls'}", "name=x"])
        assert code == 2
        assert f"(PID {holder.pid}, lscore train)" in error_line(capsys)
        export = ["export", str(checkpoint), "--format", "safetensors", "--overwrite"]
        code = main([*export, "--out", str(tmp_path / "export")])
        assert code == 2
        assert f"(PID {export_holder.pid}, lscore train)" in error_line(capsys)
        assert os.listdir(tmp_path / "export") == [LOCK_FILE]  # nothing written beside it
    finally:
        for proc in (holder, export_holder):
            proc.kill()
            proc.wait()


def test_a_refused_start_leaves_no_directory_behind(tmp_path):
    with (
        pytest.raises(RunDirectoryLocked),
        run_lock(tmp_path / "a", "first"),
        run_lock(tmp_path / "a", "second"),
    ):
        pass
    assert not (tmp_path / "a").exists()  # created by the first holder, empty, removed


# -- Ctrl-C (item 4) -------------------------------------------------------------------------------
def test_ctrl_c_saves_like_sigterm_and_exits_130(tmp_path):
    proc = start_run(tmp_path, "--hang-at", "4", "checkpoint.every_n_steps=100")
    wait_for(proc, tmp_path / "hanging")
    last = tmp_path / "toy2d" / "checkpoints" / "last.ckpt"
    assert not last.exists()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == INTERRUPTED_EXIT_CODE, proc.stderr.read()[-3000:]
    assert "SIGINT: saved" in proc.stderr.read()
    assert load_checkpoint(last)["global_step"] == 5  # the batch under way finished, then saved


# -- metrics.csv rows survive a kill inside a checkpoint write (item 5) ----------------------------
def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "logs" / "metrics.csv", newline="") as fh:
        return [
            {k: v for k, v in row.items() if k != "train/samples_per_s"}
            for row in csv.DictReader(fh)
        ]


def test_a_kill_inside_a_checkpoint_write_loses_no_metrics_row(tmp_path):
    """SIGKILL half-way through ``last.ckpt`` of step 6, after ``step0000006.ckpt`` was written:
    the rerun continues from step 6, and the log ends with the rows of an uninterrupted run
    (Lightning logs a step's rows after its checkpoint callback: they used to be lost)."""
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    periodic = "checkpoint.keep_periodic=true"
    proc = start_run(killed, "--kill-in-write", "6", periodic)
    assert proc.wait(timeout=240) == -signal.SIGKILL, proc.stderr.read()[-3000:]
    ckpts = killed / "toy2d" / "checkpoints"
    assert load_checkpoint(ckpts / "step0000006.ckpt")["global_step"] == 6
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 3
    train(tiny_config(killed, periodic))
    train(tiny_config(reference, periodic))
    got, want = metric_rows(killed / "toy2d"), metric_rows(reference / "toy2d")
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert got == want


# -- disk full during a checkpoint write (item 12) -------------------------------------------------
class FullDisk(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, fh, room: int) -> None:
        self.fh, self.room = fh, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.fh.write(data)


def test_a_full_disk_is_one_line_naming_the_file_and_the_space_needed(tmp_path, monkeypatch):
    io_plugin, last = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    ckpt = {
        "state_dict": {"w": torch.ones(1 << 18)},  # 1 MiB of weights
        "global_step": 1,
        "hyper_parameters": {"config": to_dict(tiny_config(tmp_path))},
    }
    io_plugin.save_checkpoint(ckpt, last)
    good = last.read_bytes()
    real_save = torch.save
    monkeypatch.setattr(
        torch, "save", lambda obj, fh, **kw: real_save(obj, FullDisk(fh, 4096), **kw)
    )
    with pytest.raises(CheckpointError) as err:
        io_plugin.save_checkpoint({**ckpt, "global_step": 2}, last)
    message = str(err.value)
    assert "\n" not in message and err.value.__cause__ is None
    assert f"no space left on the device to write {last}" in message
    assert "needs about 1.0 MiB and " in message and " are free" in message
    assert last.read_bytes() == good  # the earlier checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # temp file removed


def test_a_full_disk_during_training_ends_the_command_in_one_line(tmp_path, monkeypatch, capsys):
    real_save = torch.save
    monkeypatch.setattr(
        torch,
        "save",
        lambda obj, fh, **kw: real_save(
            obj, FullDisk(fh, 4096) if obj.get("global_step") == 6 else fh, **kw
        ),
    )
    overrides = ["trainer.max_steps=12", "checkpoint.every_n_steps=3", "data.num_points=320"]
    assert main(["train", *TOY, f"out_dir={tmp_path}", *overrides]) == 2
    line = error_line(capsys)
    assert line.startswith("lscore train: error: no space left on the device to write ")
    ckpts = tmp_path / "toy2d" / "checkpoints"
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 3
    assert not list(ckpts.glob(".*.tmp"))


# -- the classifier's checkpoints (items 3, 18) ----------------------------------------------------
def test_classifier_checkpoints_keep_their_predecessor_and_stay_inside_out_dir(tmp_path, capsys):
    out = ["out_dir=" + str(tmp_path), "trainer.max_steps=4", "checkpoint.every_n_steps=2"]
    fast = ["trainer.val_check_interval=4", "trainer.limit_val_batches=1"]
    assert main(["train-classifier", *out, *fast, "name=../x"]) == 2
    assert "name='../x' must stay inside out_dir" in error_line(capsys)
    assert (
        main(["train-classifier", *out, *fast, "name=cls", "checkpoint.keep_periodic=false"]) == 0
    )
    ckpts = tmp_path / "cls" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last-prev.ckpt", "last.ckpt"]
    assert load_checkpoint(ckpts / "last-prev.ckpt")["global_step"] == 2
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 4


# -- config values checked at load (item 10) -------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sde.sigma_max=inf", "sde.sigma_max=inf is not a finite number"),
        ("optim.lr=1e400", "optim.lr=inf is not a finite number"),
        ("optim.lr=nan", "optim.lr=nan is not a finite number"),
        ("seed=-1", "seed must lie in [0, 2^32 - 1], got -1"),
        ("data.image_size=3", "data.image_size=3 does not fit model.name=unet"),
        ("data.image_size=5", "data.image_size=5 does not fit model.name=unet"),
        ("trainer.accelerator=tpu", "trainer.accelerator=tpu is not supported"),
    ],
)
def test_values_that_failed_after_the_dry_run_are_refused_by_it(override, message, capsys):
    quickstart = ["--config", str(ROOT / "configs" / "quickstart.yaml")]
    assert main(["train", *quickstart, "--dry-run", "sde.name=vesde", override]) == 2
    assert message in error_line(capsys)


def test_image_sizes_the_network_takes_still_pass(capsys):
    quickstart = ["--config", str(ROOT / "configs" / "quickstart.yaml")]
    for size in (4, 6, 16):
        assert main(["train", *quickstart, "--dry-run", f"data.image_size={size}"]) == 0
    assert "image_size: 16" in capsys.readouterr().out


# -- export file modes (item 18) -------------------------------------------------------------------
def test_the_export_weights_have_the_mode_of_the_other_export_files(tmp_path, checkpoint):
    out = tmp_path / "export"
    assert main(["export", str(checkpoint), "--format", "safetensors", "--out", str(out)]) == 0
    mode = stat.S_IMODE((out / "config.json").stat().st_mode)
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == mode
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors"]


# -- train.py: overrides anywhere, its own name, no torch before the config is checked -------------
def run_train_py(*args: str, importtime: bool = False) -> subprocess.CompletedProcess:
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run(
        [sys.executable, *flags, "train.py", *args],
        cwd=ROOT,
        env={**ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_train_py_takes_overrides_after_dry_run_and_names_itself():
    proc = run_train_py("seed=3", "--dry-run", "name=x")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("name: x\nseed: 3\n")
    proc = run_train_py("--dry-run", "optim.lr=-1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["train.py: error: optim.lr must be > 0, got -1.0"]


@pytest.mark.parametrize(
    "args",
    [["--dry-run", "bogus.key=1"], ["--dry-run", "seed=-1"], ["--dry-run", "name=../x"], ["--bad"]],
)
def test_argument_and_config_errors_answer_before_torch_is_imported(args):
    proc = run_train_py(*args, importtime=True)
    assert proc.returncode == 2
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "lightning_score.config" in imported  # the check ran
    assert not {"torch", "lightning", "numpy"} & imported


# -- README outputs (item 24) ----------------------------------------------------------------------
def test_the_readme_commands_write_under_runs_or_into_git_ignored_folders():
    import re

    outputs = re.findall(r"--out (\S+)", (ROOT / "README.md").read_text())
    assert len(outputs) > 10
    outside = [o for o in outputs if not o.startswith(("runs/", "$", "/")) and "://" not in o]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *outside], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert sorted(set(outside) - set(ignored)) == []


# -- CPU threads (item 19) -------------------------------------------------------------------------
@pytest.mark.parametrize(("cores", "load", "want"), [(2, 1.3, 1), (2, 0.0, 2), (16, 3.0, 4)])
def test_threads_follow_the_free_cores_and_are_printed_once(cores, load, want, monkeypatch, capsys):
    from lightning_score import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))
    assert threads.choose_threads() == want
    assert os.environ["OMP_NUM_THREADS"] == str(want) and torch.get_num_threads() == want
    assert capsys.readouterr().err == (
        f"CPU threads: {want} (free cores now, at most 4; set OMP_NUM_THREADS to choose)\n"
    )
    assert threads.choose_threads() == want  # now set: kept, and not printed again
    assert capsys.readouterr().err == ""


def test_a_thread_count_the_user_set_is_kept(monkeypatch, capsys):
    from lightning_score import threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads() == 3
    assert capsys.readouterr().err == ""


def test_commands_choose_threads_before_they_run(monkeypatch, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    quickstart = ["--config", str(ROOT / "configs" / "quickstart.yaml")]
    assert main(["train", *quickstart, "--dry-run"]) == 0
    assert capsys.readouterr().err.startswith("CPU threads: ")


def test_convert_without_data_answers_before_torch_is_imported(tmp_path):
    (tmp_path / "unet").mkdir()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lightning_score.cli", "convert", str(tmp_path)],
        cwd=ROOT,
        env={**ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "lscore convert: error: a diffusers model does not say what" in proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "torch" not in imported
