"""Progress of long jobs: counts and ETAs on a terminal, plain lines in a log file, silence for
short jobs; training counts optimizer steps and ends with a summary."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch

from lightning_score import progress
from lightning_score.config import SamplingConfig
from lightning_score.evaluation import compute_reference_stats
from lightning_score.experiment import load_config
from lightning_score.progress import LogLines, progress_bar
from lightning_score.sampling.generate import stream_samples
from lightning_score.sde import VPSDE
from lightning_score.training.run import train

ROOT = Path(__file__).resolve().parents[1]
ETA = r"\[\d\d:\d\d<\d\d:\d\d"  # elapsed<remaining


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_file_gets_plain_lines_with_count_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)  # a line at every update
    out = io.StringIO()
    with progress_bar(total=3, desc="job", unit="image", file=out) as bar:
        assert isinstance(bar, LogLines)
        for _ in range(3):
            bar.update()
    lines = out.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == [
        "job: 1/3 (33%)",
        "job: 2/3 (67%)",
        "job: 3/3 (100%)",
    ]
    assert all(re.search(ETA, line) and "image/s" in line for line in lines)
    assert "\r" not in out.getvalue()


def test_short_job_in_a_log_prints_nothing_and_disabled_bars_never_print() -> None:
    out = io.StringIO()
    for _ in progress_bar(range(50), desc="quick", file=out):  # far below LOG_INTERVAL_S
        pass
    for _ in progress_bar(range(50), desc="off", file=out, enabled=False):
        pass
    off = LogLines(total=3, file=out, disable=True, interval=0.0)  # e.g. on ranks other than 0
    off.update(3)
    off.close()
    assert out.getvalue() == ""


def test_terminal_gets_a_redrawn_bar() -> None:
    out = Terminal()
    for _ in progress_bar(range(4), desc="job", file=out, mininterval=0):
        pass
    text = out.getvalue()
    assert "\r" in text and "job: 100%" in text and "4/4" in text


def test_sampling_and_reference_statistics_report_counts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The long jobs of the issue: sample streams (grids, evaluate) and reference statistics."""
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    sde = VPSDE()
    cfg = SamplingConfig(sampler="euler", steps=3)
    batches = list(
        stream_samples(
            lambda x, t: -x, sde, (2,), cfg, num=5, batch_size=2, progress=True, desc="grid"
        )
    )
    assert sum(len(b.samples) for b in batches) == 5

    class Extractor:
        name, num_features = "tiny", 3

        def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"pool": images.float().mean((2, 3))}

    images = [torch.rand(4, 3, 8, 8), torch.rand(2, 3, 8, 8)]
    compute_reference_stats(images, Extractor(), kid_features=0, progress=True, num_images=6)
    err = capsys.readouterr().err
    assert re.search(r"^grid: 5/5 \(100%\) " + ETA, err, re.M)
    assert re.search(r"^euler: 3/3 \(100%\)", err, re.M)  # the sampler's steps within a batch
    assert re.search(r"^reference statistics: 6/6 \(100%\) " + ETA, err, re.M)


def _tiny_run(out_dir: Path) -> None:
    cfg = load_config(
        ROOT / "configs" / "quickstart.yaml",
        [
            f"out_dir={out_dir}",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "trainer.limit_val_batches=1",
            "trainer.log_every_n_steps=1",
            "model.kwargs.channels=[8,16]",
            "checkpoint.every_n_steps=4",
            "sample_grid.every_n_steps=100000",
            "sample_grid.num=4",
            "sample_grid.steps=2",
            "evaluation.every_n_steps=0",
        ],
    )
    train(cfg)


def test_training_counts_steps_in_a_log_and_ends_with_a_summary(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    _tiny_run(tmp_path)
    out = capsys.readouterr().out
    steps = re.findall(r"^step (\d+)/4 \((\d+)%\) " + ETA + r".*step/s", out, re.M)
    assert steps and steps[-1] == ("4", "100")  # counts optimizer steps up to max_steps
    assert "Epoch" not in out and "\r" not in out
    run_dir = tmp_path / "quickstart"
    assert re.search(r"^done: step 4/4, 4 steps in \d+ s", out, re.M)
    assert re.search(r"final: .*train/loss [0-9.]+.*val/loss [0-9.]+", out)
    assert f"checkpoint: {run_dir / 'checkpoints' / 'last.ckpt'}" in out
    assert f"samples:    {run_dir / 'samples' / 'samples_step0000004.png'}" in out


def test_training_bar_on_a_terminal_shows_step_of_max_steps(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import lightning_score.training.step_progress as tp

    monkeypatch.setattr(tp, "is_terminal", lambda stream: True)
    _tiny_run(tmp_path)
    frames = capsys.readouterr().out.replace("\r", "\n")
    assert re.search(r"^step 4/4 \|.*\| 100% " + ETA, frames, re.M)
    assert not re.search(r"^Epoch \d", frames, re.M)
