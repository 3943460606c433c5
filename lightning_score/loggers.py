"""Experiment loggers: CSV (default), TensorBoard or Weights & Biases, all under the run directory."""

from __future__ import annotations

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from lightning_score.config import ExperimentConfig, to_dict


def build_logger(cfg: ExperimentConfig) -> Logger:
    log_dir = cfg.run_dir / "logs"
    if cfg.logger.name == "tensorboard":
        return TensorBoardLogger(save_dir=str(log_dir), name="", version="")
    if cfg.logger.name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        log_dir.mkdir(parents=True, exist_ok=True)
        logger = WandbLogger(
            name=cfg.name,
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            save_dir=str(log_dir),
            log_model=cfg.logger.log_model,
            tags=list(cfg.logger.tags),
        )
        logger.log_hyperparams(to_dict(cfg))
        return logger
    return CSVLogger(save_dir=str(log_dir), name="", version="")
