"""Every W&B sweep file under sweeps/ is valid before anyone spends GPU hours on it.

Checked offline, per file: W&B's own sweep schema (the ``sweeps`` package the W&B server runs,
installed with ``--no-deps``), every parameter name against our config schema (``sampling.``
fields only for ``lscore evaluate`` sweeps), and every grid point: its argument list, built
exactly as the agent builds ``${args_no_hyphens}``, through ``train.py --dry-run`` (training
sweeps) or through config loading plus the sampler check against the checkpoint's config
(evaluation sweeps). Problems are reported as ``sweeps/<file>: <key>: <why>``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import DictConfig, OmegaConf

from lightning_score.cli import main
from lightning_score.config import ExperimentConfig, SamplingConfig
from lightning_score.experiment import load_config

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))
RUN_ID = "sweeptest123"  # stands in for the W&B run id the agent exports as WANDB_RUN_ID
OPEN_SECTIONS = ("model.kwargs.",)  # free-form dicts: checked by the dry run, not the schema


def schema_keys(node: DictConfig, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in node.items():
        full = f"{prefix}{key}"
        keys.add(full)
        if isinstance(value, DictConfig) and f"{full}." not in OPEN_SECTIONS:
            keys |= schema_keys(value, f"{full}.")
    return keys


CONFIG_KEYS = schema_keys(OmegaConf.structured(ExperimentConfig))
SAMPLING_KEYS = {f"sampling.{f.name}" for f in dataclasses.fields(SamplingConfig)}
#: what `lscore evaluate` takes: sampler settings, and a post-hoc EMA width
EVALUATE_KEYS = SAMPLING_KEYS | {"ema.std_rel"}


def leaf_keys(name: str, values: list[Any]) -> list[str]:
    """A parameter's config keys: itself, or ``name.<k>`` for each key of dict values."""
    nested = {k for v in values if isinstance(v, dict) for k in v}
    return [f"{name}.{k}" for k in sorted(nested)] if nested else [name]


def key_problem(key: str, valid: set[str]) -> str | None:
    if key in valid or key.startswith(OPEN_SECTIONS):
        return None
    close = difflib.get_close_matches(key, sorted(valid), n=1)
    return "not a config key" + (f" (did you mean '{close[0]}'?)" if close else "")


def grid_points(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """All grid points in the order W&B's grid search runs them."""
    import sweeps

    runs: list[Any] = []
    while (run := sweeps.next_run(sweep, runs)) is not None:
        run.state = sweeps.RunState.finished
        runs.append(run)
    return [run.config for run in runs]


def agent_args(point: dict[str, Any]) -> list[str]:
    """``${args_no_hyphens}`` for a grid point, formatted by the W&B agent's own code."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    return create_sweep_command_args({"args": point})["args_no_hyphens"]


def expand(command: list[str], args: list[str], program: str | None) -> list[str]:
    """The agent's command line: macros replaced, ``${env} ${interpreter}`` dropped."""
    out: list[str] = []
    for chunk in command:
        if chunk == "${args_no_hyphens}":
            out += args
        elif chunk == "${program}":
            out.append(str(program))
        elif chunk not in ("${env}", "${interpreter}"):
            out.append(chunk)
    return out


def dry_run(argv: list[str]) -> tuple[int, str]:
    """``train.py --dry-run ARGV`` in this process (train.py is main(["train", ...]))."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", "--dry-run", *argv])
    return code, out.getvalue() if code == 0 else err.getvalue().strip()


def train_point_problem(argv: list[str]) -> str | None:
    code, output = dry_run(argv)
    if code != 0:
        return f"train.py --dry-run: {output}"
    resolved = yaml.safe_load(output)
    if resolved["logger"]["name"] != "wandb":
        return "the command must set logger.name=wandb, or the runs log nothing to the sweep"
    if RUN_ID not in resolved["name"]:
        return (
            "the command must make the run name unique per W&B run, e.g. "
            "name=x-${oc.env:WANDB_RUN_ID,local}, or concurrent agents share one run directory"
        )
    return None


def evaluate_point_problem(command: list[str], args: list[str]) -> str | None:
    """The agent's argument list parses with `lscore evaluate`'s own parser, its sampler
    overrides load over the config that trained the checkpoint, and they suit its SDE; a post-hoc
    EMA width needs a config that stores power-EMA snapshots and a width in range."""
    import argparse

    from lightning_score.commands import evaluate
    from lightning_score.sampling import check_sampling
    from lightning_score.sde import build_sde
    from lightning_score.training.posthoc_ema import gamma_from_std_rel

    ckpt = Path(next(c for c in command if c.endswith(".ckpt")))
    config = ROOT / "configs" / f"{ckpt.parts[1]}.yaml" if ckpt.parts[0] == "runs" else None
    if config is None or not config.is_file():
        return f"checkpoint {ckpt} is not runs/<name>/... of a configs/<name>.yaml"
    argv = expand(command, args, None)
    parser = argparse.ArgumentParser(exit_on_error=False)
    evaluate.add_arguments(parser)
    try:
        parsed = parser.parse_args(argv[argv.index("evaluate") + 1 :])
        width, overrides = evaluate.posthoc_width(parsed.overrides)
        cfg = evaluate.sampling_overrides(load_config(config), overrides)
        check_sampling(build_sde(cfg.sde), cfg.sampling)
        if width is not None and cfg.ema.kind != "power":
            return f"ema.std_rel={width} needs a run trained with ema.kind=power ({config.name})"
        if width is not None:
            gamma_from_std_rel(width)
    except (ValueError, argparse.ArgumentError) as err:
        return f"cannot sample from {ckpt}: {err}"
    return None


def sweep_problems(path: Path) -> list[str]:
    """Every problem of one sweep file, as ``sweeps/<file>: <what>``."""
    from sweeps import schema_violations_from_proposed_config

    where = f"{path.parent.name}/{path.name}"
    sweep = yaml.safe_load(path.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydantic v1-style config warnings inside `sweeps`
        problems = [
            f"{where}: W&B schema: {v}" for v in schema_violations_from_proposed_config(sweep)
        ]
    if problems:
        return problems
    command = [str(c) for c in sweep.get("command", [])]
    is_train = "${program}" in command and sweep.get("program") == "train.py"
    is_evaluate = "evaluate" in command
    if not (is_train or is_evaluate) or "${args_no_hyphens}" not in command:
        return [
            f"{where}: command must run train.py or `lscore evaluate` with ${{args_no_hyphens}}"
        ]
    valid = CONFIG_KEYS if is_train else EVALUATE_KEYS
    for name, spec in sweep["parameters"].items():
        values = spec.get("values", [spec.get("value")])
        for key in leaf_keys(name, values):
            if why := key_problem(key, valid):
                problems.append(f"{where}: parameter '{key}': {why}")
    if problems or sweep["method"] != "grid":
        return problems
    for point in grid_points(sweep):
        args = agent_args(point)
        if is_train:
            why = train_point_problem(expand(command, args, sweep["program"])[1:])
        else:
            why = evaluate_point_problem(command, args)
        if why:
            problems.append(f"{where}: grid point {args}: {why}")
    return problems


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sweep commands hold paths relative to the repository root, where agents run."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WANDB_RUN_ID", RUN_ID)


def test_the_sweeps_answer_the_issue_questions():
    names = {p.stem for p in SWEEP_FILES}
    assert {"ve_noise_schedule", "vp_noise_schedule", "loss_weighting", "sampler_ablation"} <= names
    assert names & {"ema_decay", "network_width"}
    for path in SWEEP_FILES:
        assert path.read_text().startswith("# Question:"), f"{path.name}: say what it answers"


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.name for p in SWEEP_FILES])
def test_sweep_file_is_valid(path: Path):
    assert sweep_problems(path) == []


def _broken_copy(tmp_path: Path, source: str, *edits: tuple[str, str]) -> Path:
    """A copy of sweeps/<source> under tmp_path/sweeps with text replaced."""
    text = (ROOT / "sweeps" / source).read_text()
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    path = tmp_path / "sweeps" / source
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_a_misspelled_parameter_is_reported_with_file_and_key(tmp_path: Path):
    path = _broken_copy(tmp_path, "ve_noise_schedule.yaml", ("sde.sigma_max:", "sde.sigma_maxx:"))
    assert sweep_problems(path) == [
        "sweeps/ve_noise_schedule.yaml: parameter 'sde.sigma_maxx': "
        "not a config key (did you mean 'sde.sigma_max'?)"
    ]
    path = _broken_copy(
        tmp_path, "sampler_ablation.yaml", ("{corrector: none}", "{correctr: none}")
    )
    assert sweep_problems(path) == [
        "sweeps/sampler_ablation.yaml: parameter 'sampling.correctr': "
        "not a config key (did you mean 'sampling.corrector'?)"
    ]


def test_bad_grid_points_and_schema_violations_are_reported(tmp_path: Path):
    sigma2_importance = ("time_sampler: uniform}", "time_sampler: importance}")
    problems = sweep_problems(_broken_copy(tmp_path, "loss_weighting.yaml", sigma2_importance))
    assert len(problems) == 2, problems  # that arm on vpsde and on subvpsde
    assert all("dry-run: lscore train: error: loss.time_sampler=importance" in p for p in problems)

    one_step_count = ("values: [100, 250, 500, 1000]", "values: [100]")
    unknown = ("ancestral_sampling]", "ancestral]")
    problems = sweep_problems(
        _broken_copy(tmp_path, "sampler_ablation.yaml", one_step_count, unknown)
    )
    assert len(problems) == 3, problems  # that predictor with each corrector arm
    assert all("unknown sampling.predictor 'ancestral'" in p for p in problems), problems

    path = _broken_copy(tmp_path, "vp_noise_schedule.yaml", ("method: grid", "method: gird"))
    assert sweep_problems(path)[0].startswith("sweeps/vp_noise_schedule.yaml: W&B schema: 'gird'")


def test_a_posthoc_width_sweep_needs_a_power_ema_run_and_widths_in_range(tmp_path: Path):
    exponential = ("runs/quickstart_power/", "runs/quickstart/")
    problems = sweep_problems(_broken_copy(tmp_path, "posthoc_ema_width.yaml", exponential))
    assert len(problems) == 10, problems  # every width
    assert all("needs a run trained with ema.kind=power (quickstart.yaml)" in p for p in problems)

    too_wide = ("0.17, 0.20]", "0.17, 0.30]")
    problems = sweep_problems(_broken_copy(tmp_path, "posthoc_ema_width.yaml", too_wide))
    assert len(problems) == 1, problems
    assert "std_rel must lie in (0, 0.2887), got 0.3" in problems[0]
