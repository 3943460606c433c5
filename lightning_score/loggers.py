"""Experiment loggers: CSV (default), TensorBoard or Weights & Biases, all under the run directory.

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

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from lightning_score.config import ExperimentConfig, flatten, to_dict


def _set_run_config(run: Any, config: Mapping[str, Any]) -> None:
    """Flat, JSON-safe config on ``run``; ``setdefaults`` keeps (locked) values a sweep already set."""
    run.config.setdefaults(json.loads(json.dumps(flatten(config), default=str)))


class ScoreWandbLogger(WandbLogger):
    """WandbLogger with our config as flat run config; finishes the W&B run when training ends."""

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        # ScoreModule saves {"config": resolved config}; its sections become top-level keys.
        params = dict(params)
        _set_run_config(self.experiment, params.get("config", params))

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)  # uploads checkpoints as artifacts when log_model is set
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)


def wandb_dir(default: Path) -> Path:
    """``$WANDB_DIR`` when the user set it, else ``default`` (inside the run directory)."""
    return Path(os.environ.get("WANDB_DIR") or default)


def build_logger(cfg: ExperimentConfig) -> Logger:
    log_dir = cfg.run_dir / "logs"
    if cfg.logger.name == "tensorboard":
        return TensorBoardLogger(save_dir=str(log_dir), name="", version="")
    if cfg.logger.name == "wandb":
        save_dir = wandb_dir(log_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        return ScoreWandbLogger(
            name=cfg.name,
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            save_dir=str(save_dir),
            log_model=cfg.logger.log_model,
            tags=list(cfg.logger.tags),
        )
    return CSVLogger(save_dir=str(log_dir), name="", version="")


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
