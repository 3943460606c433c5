"""Config loading: every bad input gives one clear line that names the key and the fix."""

import subprocess
import sys
from pathlib import Path

import pytest

from lightning_score.config import ConfigError
from lightning_score.experiment import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load_and_validate(path):
    cfg = load_config(path)
    assert cfg.name


BAD = [
    (
        ["sde.sigam_max=10"],
        r"unknown config key 'sde.sigam_max' \(did you mean 'sde.sigma_max'\?\)",
    ),
    (["trainer.max_step=5"], r"did you mean 'trainer.max_steps'"),
    (["optim.lr=fast"], r"wrong type for 'optim.lr'"),
    (["trainer.max_steps=1.5"], r"wrong type for 'trainer.max_steps'"),
    (
        ["sde.name=vesde", "sde.sigma_min=60", "sde.sigma_max=50"],
        r"sde.sigma_min \(60.0\) must be below sde.sigma_max",
    ),
    (["sde.name=vesde", "sde.sigma_min=-1"], r"sde.sigma_min must be > 0"),
    (["sde.name=vpsde", "sde.beta_min=30"], r"sde.beta_min \(30.0\) must be below sde.beta_max"),
    (["sde.name=vp"], r"sde.name='vp' is not valid.*choose one of: edm, subvpsde, vesde, vpsde"),
    (["data.name=cifar"], r"data.name='cifar' is not valid \(did you mean 'cifar10'\?\)"),
    (["model.name=ncsnpp_cifar"], r"model.name='ncsnpp_cifar' is not valid"),
    (["model.kwargs.chanels=[8]"], r"unknown keys \['chanels'\] for network 'unet'"),
    (["loss.weighting=sigma"], r"loss.weighting='sigma' is not valid \(did you mean 'sigma2'\?\)"),
    (
        ["loss.time_sampler=importance"],
        r"importance is the variance reduction for loss.weighting=likelihood",
    ),
    (["loss.eps=1.5"], r"loss.eps must lie in \(0, 1\)"),
    (["ema.decay=1.0"], r"ema.decay must lie in \(0, 1\)"),
    (
        ["trainer.devices=3", "data.batch_size=64"],
        r"must be divisible by trainer.devices x trainer.num_nodes \(3\)",
    ),
    (["sampling.steps=0"], r"sampling.steps must be a positive integer"),
    (["sampling.snr=-0.1"], r"sampling.snr must be > 0"),
    (["sampling.predictor=heun"], r"unknown sampling.predictor 'heun'"),
    (
        ["trainer.precision=bf16"],
        r"trainer.precision='bf16' is ambiguous: use trainer.precision=bf16-mixed \(",
    ),
    (
        ["trainer.precision=bf16-mix"],
        r"trainer.precision='bf16-mix' is not valid \(did you mean 'bf16-mixed'",
    ),
    (["lr=0.1"], r"unknown config key 'lr'"),
    (["justakey"], r"overrides must look like key=value"),
    # reliability (issue 6): ranges, DDP batch splits and the resume / non-finite keys
    (["sde.name=vesde", "sde.sigma_max=-5"], r"sde.sigma_max must be > 0, got -5.0"),
    (
        ["sde.name=vpsde", "sde.beta_min=20", "sde.beta_max=20"],
        r"sde.beta_min \(20.0\) must be below sde.beta_max \(20.0\)",
    ),
    (["loss.eps=0"], r"loss.eps must lie in \(0, 1\), got 0.0"),
    (["sampling.eps=1.0"], r"sampling.eps must lie in \(0, T=1\), got 1.0"),
    (["optim.lr=-1e-4"], r"optim.lr must be > 0"),
    (["data.batch_size=0"], r"data.batch_size must be positive"),
    (
        ["trainer.devices=[0,1,2]", "data.batch_size=64"],
        r"data.batch_size \(64\) is the global batch: .* \(3\)",
    ),
    (
        ["trainer.devices=2", "trainer.num_nodes=2", "data.batch_size=6"],
        r"data.batch_size \(6\) is the global batch: .* \(4\)",
    ),
    (
        ["trainer.nonfinite=ignore"],
        r"trainer.nonfinite='ignore' is not valid; choose one of: skip, stop",
    ),
    (["trainer.nonfinit=skip"], r"did you mean 'trainer.nonfinite'"),
    (["resum=auto"], r"unknown config key 'resum' \(did you mean 'resume'\?\)"),
    (["resume=null"], r"wrong type for 'resume'"),
    (["resume=''"], r"resume must be none, auto or the path of a checkpoint"),
    # values that passed --dry-run and failed later (issues 13, 14)
    (["sampling.schedule=foo"], r"unknown sampling.schedule 'foo'; valid names: edm"),
    (["trainer.accelerator=tpux"], r"trainer.accelerator='tpux' is not valid"),
    (["trainer.devices=0"], r"trainer.devices must be a positive count, -1, 'auto' or a list"),
    (["trainer.devices=[]"], r"trainer.devices must be a positive count"),
    (["trainer.val_check_interval=0"], r"trainer.val_check_interval must be a positive number"),
    (["trainer.log_every_n_steps=0"], r"trainer.log_every_n_steps must be positive"),
    (["trainer.num_nodes=0"], r"trainer.num_nodes must be positive"),
    (["sample_grid.num=0"], r"sample_grid.num must be positive"),
    (["sample_grid.every_n_steps=0"], r"sample_grid.every_n_steps must be positive"),
    (["name=../../escape"], r"name='../../escape' must stay inside out_dir"),
    (["name=/tmp/elsewhere"], r"name='/tmp/elsewhere' must stay inside out_dir"),
    (["name=' '"], r"name must not be empty"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_config_gives_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(ROOT / "configs" / "quickstart.yaml", overrides)
    assert "\n" not in str(info.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match=r"config file .* not found"):
        load_config("nope.yaml")


def test_yaml_with_unknown_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  batchsize: 3\n")
    with pytest.raises(
        ConfigError,
        match=r"bad.yaml: unknown config key 'data.batchsize' \(did you mean 'data.batch_size'\?\)",
    ):
        load_config(bad)


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_bad_key_is_one_line_and_exit_2():
    proc = run_cli("sde.sigma_mx=3")
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "did you mean 'sde.sigma_max'" in lines[0], proc.stderr


def test_cli_missing_dataset_is_clear(tmp_path):
    proc = run_cli(
        "data.name=cifar10",
        f"data.root={tmp_path / 'nothing'}",
        f"out_dir={tmp_path}",
        "trainer.accelerator=cpu",
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "CIFAR-10 not found" in last and "data.download=true" in last, proc.stderr


def test_dry_run_prints_resolved_config():
    proc = run_cli("--dry-run", "sde.name=subvpsde", "loss.weighting=likelihood")
    assert proc.returncode == 0, proc.stderr
    assert "name: subvpsde" in proc.stdout and "weighting: likelihood" in proc.stdout


def test_an_accelerator_this_machine_lacks_stops_training_before_anything_is_written(
    tmp_path, capsys
):
    """``trainer.accelerator=mps`` is a valid name (it loads, and --dry-run says it will not run
    here); training stops at once with one line instead of a Lightning traceback."""
    from lightning_score.cli import main

    quickstart = ["--config", str(ROOT / "configs" / "quickstart.yaml")]
    assert main(["train", *quickstart, "trainer.accelerator=mps", f"out_dir={tmp_path}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "trainer.accelerator=mps" in lines[0] and "not available" in lines[0]
    assert list(tmp_path.iterdir()) == []
    assert main(["train", *quickstart, "--dry-run", "trainer.accelerator=mps"]) == 0
    out, err = capsys.readouterr()
    assert "accelerator: mps" in out
    assert "trainer.accelerator=mps is not available on this machine" in err
