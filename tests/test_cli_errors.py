"""Bad command-line input to the checkpoint commands: one line on stderr and exit status 2, before
any sampling or metric work; never a traceback, never the wrong diagnosis."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_score import sampling
from lightning_score.cli import main
from lightning_score.sampling import generate


@pytest.fixture
def no_work(monkeypatch):
    """Sampling fails the test: every refusal here must come before it."""

    def never(*args, **kwargs):
        raise AssertionError("started sampling before refusing the input")

    monkeypatch.setattr(sampling, "sample", never)
    monkeypatch.setattr(generate, "sample", never)  # the streaming generator's own reference


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_counts_and_sizes_must_be_positive(checkpoint, tmp_path, capsys, no_work):
    ckpt, out = str(checkpoint), str(tmp_path / "out")
    for num in ("0", "-3"):  # 0 used to run the 50,000-sample default
        err = refused(capsys, "evaluate", ckpt, "--num", num, "--out", out)
        assert f"--num must be a positive number of samples, got {num}" in err
    err = refused(capsys, "evaluate", ckpt, "--num", "8", "--sample-batch-size", "0")
    assert "--sample-batch-size must be positive, got 0" in err
    err = refused(capsys, "likelihood", ckpt, "--num", "0")
    assert "--num must be a positive number of points, got 0" in err
    assert "--repeats must be positive" in refused(capsys, "likelihood", ckpt, "--repeats", "0")
    err = refused(capsys, "sample", ckpt, "--out", out, "--grid", "0")
    assert "--grid must be a positive number of samples, got 0" in err
    assert "--num must be positive" in refused(capsys, "sample", ckpt, "--out", out, "--num", "0")
    assert not (tmp_path / "out").exists()


def test_devices(checkpoint, tmp_path, capsys, monkeypatch, no_work):
    ckpt, out = str(checkpoint), str(tmp_path / "out")
    for command in (["sample", ckpt, "--out", out], ["likelihood", ckpt], ["evaluate", ckpt]):
        err = refused(capsys, *command, "--device", "bogus")
        assert "--device bogus is not a device" in err and "cpu" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = refused(capsys, "sample", ckpt, "--out", out, "--device", "cuda")
    assert "--device cuda: CUDA is not available" in err and "corrupt" not in err


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_a_file_that_is_not_a_checkpoint(checkpoint, tmp_path, capsys, no_work, kind):
    bad = tmp_path / "bad.ckpt"
    if kind == "text":
        bad.write_text("epoch 3: loss went down\n" * 20)
    else:
        bad.write_bytes(checkpoint.read_bytes()[:5000])
    out = str(tmp_path / "out")
    for argv in (
        ["sample", str(bad), "--out", out],
        ["ablate", str(bad), "--samplers", "euler:2", "--out", out],
        ["evaluate", str(bad), "--num", "4"],
        ["likelihood", str(bad)],
    ):
        err = refused(capsys, *argv)
        assert "bad.ckpt is corrupt, truncated or not a checkpoint" in err, argv


def test_ablate_settings_files_that_do_not_parse(checkpoint, tmp_path, capsys, no_work):
    broken = tmp_path / "broken.yaml"
    broken.write_text("- sampler: euler\n  steps: [10, 20\n")
    out = str(tmp_path / "out")
    err = refused(capsys, "ablate", str(checkpoint), "--samplers", str(broken), "--out", out)
    assert "broken.yaml is not valid YAML/JSON" in err
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("- sampler: euler\n  steps: ten\n")
    err = refused(capsys, "ablate", str(checkpoint), "--samplers", str(wrong_type), "--out", out)
    assert "wrong.yaml" in err and "steps" in err


def test_ablate_settings_a_bad_file_lists_what_is_wrong(tmp_path: Path) -> None:
    from lightning_score.commands.ablate import parse_settings
    from lightning_score.config import SamplingConfig

    spec = tmp_path / "s.yaml"
    spec.write_text("- {sampler: heun, steps: [5, 10]}\n")
    assert [cfg.steps for _, cfg in parse_settings(str(spec), SamplingConfig())] == [5, 10]
