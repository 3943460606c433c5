"""Experiment loggers: CSV (default), TensorBoard or Weights & Biases, all under the run directory.

A resumed run continues its log rather than starting a new one. ``resume_step`` is the first step
the resumed run logs again (the step stored in its checkpoint): entries an interrupted run logged
from that step on are replayed, so they are dropped first, and the log of an interrupted and
resumed run holds the rows an uninterrupted run writes.

* CSV: ``logs/metrics.csv`` is continued (Lightning's ``CSVLogger`` deletes it): rows from
  ``resume_step`` on are dropped once the fit has restored the checkpoint (a resume that fails
  earlier leaves the file alone), and every row goes to disk when it is logged. Lightning logs
  a step's training rows after its checkpoint is written; ``RunCheckpoint`` logs them before
  the write instead, so a kill inside it loses none. One gap remains: a validation that runs at a
  checkpoint step runs after the write, and a process killed before its rows are logged loses
  them (the resumed run does not repeat that validation).
* TensorBoard: a resumed run adds an event file; TensorBoard's reader drops the earlier events
  of the steps that file replays (it purges on an out-of-order step).
* W&B: the run id is kept in ``logs/wandb-run-id``; a resumed run continues that W&B run
  (``resume="allow"``) instead of starting a new one.

W&B specifics, so that sweeps and dashboards line up with our configs:

* The run config is the resolved config flattened to dotlist keys (``sde.sigma_max``), the very
  names a sweep sets with ``${args_no_hyphens}``; keys a sweep agent already set are left alone.
* Files go to ``{run_dir}/logs/wandb`` or, when set, to ``$WANDB_DIR``: WandbLogger's own default
  ``save_dir="."`` would silently override ``WANDB_DIR``. ``WANDB_MODE=offline`` needs nothing else
  (``wandb sync`` uploads the run later).
* The W&B run is finished when training ends, so one process can train several runs.

Commands that run after training (``lscore ablate``, ``lscore evaluate``) report to W&B through
:func:`report_to_wandb` when the checkpoint was trained with ``logger.name=wandb`` or a W&B sweep
agent started the process.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from lightning_score.config import ExperimentConfig, flatten, to_dict
from lightning_score.outputs import write_text


def _set_run_config(run: Any, config: Mapping[str, Any]) -> None:
    """Flat, JSON-safe config on ``run``; ``setdefaults`` keeps (locked) values a sweep already set."""
    run.config.setdefaults(json.loads(json.dumps(flatten(config), default=str)))


class ScoreWandbLogger(WandbLogger):
    """WandbLogger with our config as flat run config; finishes the W&B run when training ends;
    keeps its run id in ``id_file`` so that a resumed run continues the same W&B run."""

    def __init__(self, *args: Any, id_file: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.id_file = id_file
        # Lightning passes anonymous=None when it is unset, which newer wandb versions answer
        # with a deprecation warning on every run; unset means leaving it out.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        # Called once the fit has started, on global rank zero alone: the one writer of the id.
        self.id_file.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.id_file, f"{self.version}\n")
        # ScoreModule saves {"config": resolved config}; its sections become top-level keys.
        params = dict(params)
        _set_run_config(self.experiment, params.get("config", params))

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)  # uploads checkpoints as artifacts when log_model is set
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)


class ContinuedMetricsFile(ExperimentWriter):
    """Lightning's CSV writer, continuing an existing ``metrics.csv`` (its columns kept) after
    dropping the rows from ``resume_step`` on; a fresh run (``resume_step=0``) keeps none."""

    def __init__(self, log_dir: str, resume_step: int) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's version deletes metrics.csv
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            kept = [row for row in reader if _step(row) < self.resume_step]
        self.metrics_keys = sorted(columns)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, path)


def _step(row: Mapping[str, str]) -> float:
    try:
        return float(row.get("step") or "inf")
    except ValueError:
        return float("inf")


class RunCSVLogger(CSVLogger):
    """``logs/metrics.csv`` continued across resumes, each row on disk as soon as it is logged."""

    def __init__(self, save_dir: Path, resume_step: int) -> None:
        super().__init__(save_dir=str(save_dir), name="", version="", flush_logs_every_n_steps=1)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ContinuedMetricsFile:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuedMetricsFile(self.log_dir, self.resume_step)
        return self._experiment


def wandb_run_id(id_file: Path, resume: bool) -> str:
    """The W&B run id: the stored one when resuming, else a new one (stored once training
    starts, by :meth:`ScoreWandbLogger.log_hyperparams`)."""
    if resume and id_file.is_file() and id_file.read_text().strip():
        return id_file.read_text().strip()
    return secrets.token_hex(4)  # W&B ids: letters and digits


def wandb_dir(default: Path) -> Path:
    """``$WANDB_DIR`` when the user set it, else ``default`` (inside the run directory)."""
    return Path(os.environ.get("WANDB_DIR") or default)


def build_logger(cfg: ExperimentConfig, resume_step: int = 0) -> Logger:
    """The configured logger; ``resume_step > 0`` continues the log of a resumed run."""
    log_dir = cfg.run_dir / "logs"
    if cfg.logger.name == "tensorboard":
        return TensorBoardLogger(save_dir=str(log_dir), name="", version="")
    if cfg.logger.name == "wandb":
        save_dir = wandb_dir(log_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        id_file = log_dir / "wandb-run-id"
        return ScoreWandbLogger(
            name=cfg.name,
            id=wandb_run_id(id_file, resume=resume_step > 0),
            id_file=id_file,
            resume="allow",
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            save_dir=str(save_dir),
            log_model=cfg.logger.log_model,
            tags=list(cfg.logger.tags),
        )
    return RunCSVLogger(log_dir, resume_step)


def wandb_requested(exp: ExperimentConfig) -> bool:
    """Whether a post-training command should report to W&B: the checkpoint was trained with the
    W&B logger, or a sweep agent launched this process (it sets ``WANDB_SWEEP_ID``)."""
    return exp.logger.name == "wandb" or bool(os.environ.get("WANDB_SWEEP_ID"))


def report_to_wandb(
    exp: ExperimentConfig,
    out_dir: Path,
    job_type: str,
    config: Mapping[str, Any],
    summary: Mapping[str, float] | None = None,
    images: Mapping[str, Path] | None = None,
    tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> bool:
    """Log a command's results as one W&B run; returns whether it did (see :func:`wandb_requested`).

    Under a sweep agent ``wandb.init`` joins the agent's run (project and entity come from the
    sweep); otherwise a new run in the checkpoint's ``logger.project``. ``summary`` holds the
    numbers dashboards compare across runs (e.g. ``nfe`` and ``fid_10k`` for quality vs NFE),
    ``tables`` rows of dicts with equal keys, ``images`` PNG files.
    """
    if not wandb_requested(exp):
        return False
    import wandb

    save_dir = wandb_dir(out_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=exp.logger.project,
        entity=exp.logger.entity,
        dir=str(save_dir),
        job_type=job_type,
        tags=list(exp.logger.tags),
    )
    _set_run_config(run, {**config, "train": to_dict(exp)})
    payload: dict[str, Any] = {k: wandb.Image(str(p)) for k, p in (images or {}).items()}
    for key, rows in (tables or {}).items():
        columns = list(rows[0]) if rows else []
        data = [[r[c] for c in columns] for r in rows]
        # allow_mixed_types: e.g. ablate's steps column holds "adaptive" for ODE rows
        payload[key] = wandb.Table(columns=columns, data=data, allow_mixed_types=True)
    if payload:
        run.log(payload)
    run.summary.update(dict(summary or {}))
    run.finish()
    return True
