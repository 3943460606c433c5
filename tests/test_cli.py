"""The `lscore` command line itself: help without torch, a default shown for every option, --version,
the device of each rank, presets and the bf16 hint."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lightning_score
from lightning_score.cli import COMMANDS, build_parser, main
from lightning_score.commands.sample import resolve_device

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )


def test_help_does_not_import_torch() -> None:
    """What makes `lscore --help` and a command's help answer at once: torch (seconds to import)
    stays out. The time itself is measured by bench/cli_help.py, not asserted here."""
    code = (
        "import sys\n"
        "from lightning_score.cli import main\n"
        "for argv in (['--help'], ['evaluate', '--help'], ['inpaint', '--help']):\n"
        "    try: main(argv)\n"
        "    except SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'lightning', 'numpy', 'diffusers') if m in sys.modules]\n"
        "print('heavy modules:', heavy)\n"
    )
    result = _python(code)
    assert "usage: lscore" in result.stdout and "usage: lscore evaluate" in result.stdout
    assert "heavy modules: []" in result.stdout, result.stdout[-300:]


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest not in ("help", "version")]


def test_every_option_has_help_and_its_default_is_shown(capsys: pytest.CaptureFixture) -> None:
    parser, _ = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == set(COMMANDS)
    for name, sub in commands.choices.items():
        text = sub.format_help()
        for action in _options(sub):
            assert action.help, f"lscore {name} {action.option_strings[0]} has no help text"
            shown = action.default not in (None, False, [])
            if shown:  # e.g. "--batch-size BATCH_SIZE  images per Inception batch (default: 50)"
                help_text = " ".join(sub._get_formatter()._expand_help(action).split())
                assert f"default: {action.default}" in help_text, (name, action.dest)
        assert "(default: None)" not in text


def test_help_lists_every_registered_name(capsys: pytest.CaptureFixture) -> None:
    """The name lists in the help texts (kept torch-free) against the registries."""
    from lightning_score.evaluation.likelihood import TRACE_ESTIMATORS
    from lightning_score.sampling import CORRECTORS, ODE_METHODS, PREDICTORS, SAMPLERS, SCHEDULES

    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for registry in (SAMPLERS, PREDICTORS, CORRECTORS, SCHEDULES, ODE_METHODS):
        for name in registry:
            assert name in text, f"`lscore sample --help` does not name {name}"
    from lightning_score.commands.likelihood import TRACE_CHOICES

    assert TRACE_CHOICES == TRACE_ESTIMATORS


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"lscore {lightning_score.__version__}"


def test_each_rank_takes_the_gpu_of_its_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # a 4-GPU machine
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device(None) == torch.device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "3")  # torchrun / SLURM launch one process per GPU
    assert resolve_device(None) == torch.device("cuda", 3)
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # an explicit GPU is kept
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")


def test_presets_compose_between_config_and_overrides(capsys: pytest.CaptureFixture) -> None:
    from lightning_score.config import ConfigError
    from lightning_score.experiment import load_config

    quickstart = ROOT / "configs" / "quickstart.yaml"
    cfg = load_config(quickstart, ["data.num_workers=0"], ["gpu", "smoke"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.max_steps == 20 and cfg.out_dir == "runs/smoke"
    assert cfg.data.num_workers == 0  # key=value overrides come last
    assert cfg.model.name == "unet" and cfg.data.name == "digits"  # the config itself stays
    with pytest.raises(ConfigError, match=r"unknown preset 'gpus' \(did you mean 'gpu'\?\)"):
        load_config(quickstart, [], ["gpus"])
    assert main(["train", "--preset", "smoke", "--preset", "ddp", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "strategy: ddp" in printed and "max_steps: 20" in printed


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_config_takes_the_presets(config: str) -> None:
    from lightning_score.experiment import load_config

    cfg = load_config(ROOT / "configs" / config, [], ["gpu", "ddp", "smoke"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.max_steps == 20
