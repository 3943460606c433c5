"""Hostile inputs to the commands (issue 18, items 13, 16, 17): a broken diffusers folder, a
device or launcher variable that cannot work, and the messages that used to name the wrong cause.
Each is one line on stderr, exit status 2, and says what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from lightning_score.cli import main

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    ours = [line for line in err if line.startswith(f"lscore {argv[0]}: error:")]
    assert len(ours) == 1 and err[-1] == ours[0], err  # diffusers may warn before; no traceback
    return ours[0]


@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DDPM pipeline folder (google/ddpm-cifar10-32's layout) with a tiny 1x8x8 UNet."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    path = tmp_path_factory.mktemp("ddpm") / "ddpm"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(path)
    return path


def _no_weights(d: Path) -> None:
    (d / WEIGHTS).unlink()


def _pickled_weights(d: Path) -> None:
    (d / WEIGHTS).unlink()
    marker = d / "EXECUTED"

    class Payload:  # what a hostile .bin would hold: unpickling it creates the marker
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"weight": Payload()}, d / "unet" / "diffusion_pytorch_model.bin")


def _misfit_config(d: Path) -> None:
    config = json.loads((d / "unet/config.json").read_text())
    config["block_out_channels"] = [16, 64]
    (d / "unet/config.json").write_text(json.dumps(config))


CONVERT_CASES = {
    "missing weights": (_no_weights, "has no diffusion_pytorch_model.safetensors"),
    "garbled config": (
        lambda d: (d / "unet/config.json").write_text('{"sample_size": 8,'),
        "unet/config.json is not valid JSON",
    ),
    "truncated weights": (
        lambda d: (d / WEIGHTS).write_bytes((d / WEIGHTS).read_bytes()[:-100]),
        "is truncated or damaged",
    ),
    "pickled weights": (_pickled_weights, "holds pickled weights only"),
    "config misfit": (_misfit_config, "do not fit its config.json"),
    "garbled scheduler": (
        lambda d: (d / "scheduler/scheduler_config.json").write_text("{garbled"),
        "scheduler_config.json is not valid JSON",
    ),
}


@pytest.mark.parametrize("case", list(CONVERT_CASES))
def test_convert_of_a_broken_diffusers_folder(ddpm_folder, tmp_path, capsys, case) -> None:
    damage, expected = CONVERT_CASES[case]
    folder = tmp_path / "model"
    shutil.copytree(ddpm_folder, folder)
    damage(folder)
    out = tmp_path / "out"
    err = refused(capsys, "convert", str(folder), "--data", "digits", "--out", str(out))
    assert expected in err
    assert not out.exists()
    assert not (folder / "EXECUTED").exists()  # a pickled .bin is never opened


def test_a_diffusers_folder_given_as_a_checkpoint_says_convert_it(ddpm_folder, tmp_path, capsys):
    for command in (["sample", "--out", str(tmp_path / "s")], ["likelihood"], ["evaluate"]):
        err = refused(capsys, command[0], str(ddpm_folder), *command[1:])
        assert f"convert it first with `lscore convert {ddpm_folder} --data NAME`" in err
        assert "does not exist" not in err


def test_devices_that_hold_no_numbers_or_are_absent(checkpoint, tmp_path, capsys) -> None:
    out = str(tmp_path / "out")
    for command in (["sample", str(checkpoint), "--out", out], ["likelihood", str(checkpoint)]):
        err = refused(capsys, *command, "--device", "meta")
        assert "--device meta holds shapes only" in err and "use cpu" in err
        if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            err = refused(capsys, *command, "--device", "xpu")
            assert "--device xpu: XPU is not available on this machine; use cpu" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("variable", ["WORLD_SIZE", "RANK", "LOCAL_RANK"])
def test_launcher_variables_that_are_not_numbers(
    checkpoint, tmp_path, capsys, monkeypatch, variable
):
    monkeypatch.setenv(variable, "abc")
    with pytest.raises(SystemExit) as help_exit:  # --help must still answer
        main(["sample", "--help"])
    assert help_exit.value.code == 0
    capsys.readouterr()
    argv = ["sample", str(checkpoint), "--out", str(tmp_path / "out")]
    err = refused(capsys, *argv, *(["--device", "cuda"] if variable == "LOCAL_RANK" else []))
    assert f"{variable}='abc' in the environment is not a valid {variable}" in err
    if variable != "LOCAL_RANK":
        assert f"{variable}='abc'" in refused(capsys, "likelihood", str(checkpoint))


def test_resume_from_a_missing_file_says_it_does_not_exist(tmp_path) -> None:
    from lightning_score.experiment import load_config
    from lightning_score.training.checkpoint import CheckpointError
    from lightning_score.training.run import resume_checkpoint

    cfg = load_config(None, [f"out_dir={tmp_path}", f"resume={tmp_path / 'nonexistent.ckpt'}"])
    with pytest.raises(CheckpointError, match=r"nonexistent\.ckpt does not exist") as err:
        resume_checkpoint(cfg)
    assert "corrupt" not in str(err.value)


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_a_text_file_as_numpy_input_never_suggests_unpickling(checkpoint, tmp_path, capsys, suffix):
    text = tmp_path / f"notes{suffix}"
    text.write_text("these are not the arrays you are looking for\n")
    if suffix == ".npz":
        argv = ["evaluate", str(text), "--stats", str(text), "--out", str(tmp_path / "e")]
    else:
        argv = ["inpaint", str(checkpoint), "--input", "val", "--mask", str(text)]
        argv += ["--num-images", "1", "--out", str(tmp_path / "i")]
    err = refused(capsys, *argv)
    named = f"notes{suffix} is not an {suffix}" in err  # evaluate's reader
    named = named or f"notes{suffix} is not a numpy file of plain arrays" in err  # inputs, masks
    assert named, err
    assert "pickle" not in err


def test_stats_file_that_is_text(tmp_path) -> None:
    from lightning_score.evaluation.reference import ReferenceStats

    text = tmp_path / "stats.npz"
    text.write_text("mu sigma\n")
    with pytest.raises(ValueError, match=r"stats\.npz is not an \.npz archive") as err:
        ReferenceStats.load(text)
    assert "pickle" not in str(err.value)


def test_random_mask_with_a_fraction_that_is_not_a_number() -> None:
    from lightning_score.conditioning.operators import named_mask

    with pytest.raises(ValueError) as err:
        named_mask("random:abc", (8, 8))
    assert "random:abc" in str(err.value) and "number in (0, 1)" in str(err.value)
    assert "could not convert" not in str(err.value)
    assert named_mask("random:0.25", (8, 8)).mean().item() == pytest.approx(0.75, abs=0.2)


def test_classifier_class_count_names_its_own_key() -> None:
    from lightning_score.config import ConfigError
    from lightning_score.data import check_labels
    from lightning_score.experiment import load_config

    data = load_config(None, ["data.name=digits"]).data
    with pytest.raises(ConfigError) as err:
        check_labels(7, data, key="num_classes")
    assert "num_classes=7" in str(err.value) and "model.num_classes" not in str(err.value)
    assert "set num_classes=10" in str(err.value)


@pytest.mark.parametrize("override", ["name=${nope}", "optim.lr=${oops:x}", "optim.lr=${name}"])
def test_interpolation_errors_are_one_line_that_names_the_key(override) -> None:
    from lightning_score.config import ConfigError
    from lightning_score.experiment import load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert len(message.splitlines()) == 1, message
    assert f"config entry '{override.split('=')[0]}'" in message


def test_inputs_in_numpy_format_still_load(tmp_path) -> None:
    """The new check lets real files through: an .npz and an .npy written by numpy."""
    from lightning_score.images import load_numpy

    np.savez(tmp_path / "a.npz", images=np.zeros((2, 8, 8), np.uint8))
    np.save(tmp_path / "b.npy", np.ones(3))
    with load_numpy(tmp_path / "a.npz") as data:
        assert data["images"].shape == (2, 8, 8)
    assert load_numpy(tmp_path / "b.npy").sum() == 3


def test_launcher_variable_read_while_importing_lightning_is_one_line(checkpoint, tmp_path) -> None:
    """Lightning and torchmetrics parse RANK / LOCAL_RANK as they are imported: in a fresh
    process the check must come before that import."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LOCAL_RANK": "abc", "RANK": "1x"}
    argv = [sys.executable, "-m", "lightning_score.cli", "sample", str(checkpoint)]
    done = subprocess.run(
        [*argv, "--out", str(tmp_path / "s")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "lscore sample: error: RANK='1x' in the environment is not a valid RANK: unset it, or "
        "start the processes with a launcher that sets it (torchrun)"
    ]
