"""Config -> (DataModule, ScoreModule, callbacks, Trainer) -> fit. One run directory per run:

    {out_dir}/{name}/config.yaml         resolved config
    {out_dir}/{name}/checkpoints/        last.ckpt (+ step-numbered snapshots), EMA inside
    {out_dir}/{name}/logs/               CSV / TensorBoard / W&B files
    {out_dir}/{name}/samples/            sample grids
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import (
    Callback,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)

from lightning_score.callbacks import SampleGridCallback
from lightning_score.callbacks_logging import logging_callbacks
from lightning_score.config import ExperimentConfig, save_config
from lightning_score.data import build_datamodule
from lightning_score.loggers import build_logger
from lightning_score.module import ScoreModule


def build_callbacks(cfg: ExperimentConfig) -> list[Callback]:
    callbacks: list[Callback] = [
        ModelCheckpoint(
            dirpath=str(cfg.run_dir / "checkpoints"),
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            every_n_train_steps=cfg.checkpoint.every_n_steps,
            save_top_k=-1 if cfg.checkpoint.keep_periodic else 0,
            save_last=True,
        ),
        LearningRateMonitor(logging_interval="step"),
        *logging_callbacks(cfg),
        TQDMProgressBar(refresh_rate=10),
        SampleGridCallback(
            cfg.run_dir / "samples",
            cfg.sampling,
            num=cfg.sample_grid.num,
            every_n_steps=cfg.sample_grid.every_n_steps,
            seed=cfg.seed,
        ),
    ]
    if cfg.ema.enabled:
        callbacks.append(EMAWeightAveraging(decay=cfg.ema.decay))
    return callbacks


def build_trainer(cfg: ExperimentConfig) -> L.Trainer:
    t = cfg.trainer
    return L.Trainer(
        default_root_dir=str(cfg.run_dir),
        max_steps=t.max_steps,
        max_epochs=-1,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        gradient_clip_val=t.gradient_clip_val or None,
        gradient_clip_algorithm="norm",
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None,
        limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        logger=build_logger(cfg),
        callbacks=build_callbacks(cfg),
        num_sanity_val_steps=0,
    )


def train(cfg: ExperimentConfig) -> Path:
    """Run training for ``cfg`` and return the run directory."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.data, seed=cfg.seed)
    module = ScoreModule(cfg)
    trainer = build_trainer(cfg)
    if trainer.is_global_zero:
        save_config(cfg, cfg.run_dir / "config.yaml")
    trainer.fit(module, datamodule=datamodule)
    return cfg.run_dir
