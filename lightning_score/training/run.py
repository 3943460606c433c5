"""Config -> (DataModule, ScoreModule, callbacks, Trainer) -> fit. One run directory per run:

    {out_dir}/{name}/config.yaml         resolved config
    {out_dir}/{name}/checkpoints/        last.ckpt, last-prev.ckpt (+ step-numbered snapshots)
    {out_dir}/{name}/logs/               CSV / TensorBoard / W&B files
    {out_dir}/{name}/samples/            sample grids

A checkpoint holds the model, EMA, optimizer, LR schedule, loop progress (step) and the train
loader's position; batch-level seeding makes the RNG streams a function of that position, so a
resumed run repeats what the interrupted one would have done (see ``data/resumable.py``).
``resume=auto`` (the default) continues from the checkpoint of the run directory with the highest
step that verifies, so rerunning a preempted command continues it.

Check first, write after: which checkpoint to continue from, whether the configured network can
take its weights and whether the config may change are all decided before anything in the run
directory is written; ``config.yaml`` is written once training has started, the log is continued,
never replaced (see ``loggers.py``), and temporary files of killed checkpoint writers are removed.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.core.optimizer import _init_optimizers_and_lr_schedulers
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.nn import Module

from lightning_score.config import (
    ConfigError,
    ExperimentConfig,
    hardware_problem,
    save_config,
    to_dict,
)
from lightning_score.data import build_datamodule
from lightning_score.evaluation import ReferenceStats
from lightning_score.experiment import check_network_fits, grid_sampling
from lightning_score.run_lock import run_lock
from lightning_score.training.checkpoint import (
    ResumePoint,
    checkpoint_config,
    config_changes,
    find_resume_checkpoint,
    load_checkpoint,
    run_checkpoints,
    verify_checkpoint,
)
from lightning_score.training.ema import EMA, PowerEMA
from lightning_score.training.loggers import build_logger
from lightning_score.training.logging_callbacks import logging_callbacks
from lightning_score.training.module import ScoreModule
from lightning_score.training.posthoc_ema import SNAPSHOT_DIR
from lightning_score.training.reliability import (
    INTERRUPTED_EXIT_CODE,
    PREEMPTED_EXIT_CODE,
    AtomicCheckpointIO,
    NonFiniteGuard,
    RunCheckpoint,
    SaveOnInterrupt,
    remove_orphaned_temp_files,
)
from lightning_score.training.sample_grids import SampleGridCallback
from lightning_score.training.speed import CompileTimer, apply_speed_options
from lightning_score.training.step_progress import StepProgressBar, run_summary, start_banner


def reference_statistics(cfg: ExperimentConfig, extractor: Module) -> str | ReferenceStats:
    """``evaluation.stats`` if given, else Inception statistics of the training set (cached by
    content, so a rerun or a second rank reads them from the cache)."""
    ev = cfg.evaluation
    if ev.stats:
        return ev.stats
    from lightning_score.data import image_batches
    from lightning_score.evaluation import cached_reference_stats

    batches = image_batches(cfg.data, cfg.seed, "train", ev.batch_size, ev.reference_num)
    with torch.no_grad():
        stats, _, _ = cached_reference_stats(
            batches,
            extractor,
            kid_features=10_000,
            device="cpu",
            progress=True,
            num_images=len(batches),
        )
    return stats


def evaluation_callbacks(cfg: ExperimentConfig) -> list[Callback]:
    """FID / KID during training, unless off or never due (no Inception or statistics work)."""
    if not 0 < cfg.evaluation.every_n_steps <= cfg.trainer.max_steps:
        return []
    from lightning_score.evaluation import load_inception
    from lightning_score.evaluation.callback import EvaluationCallback

    ev = cfg.evaluation
    extractor = load_inception(need_logits="is" in ev.metrics)
    return [
        EvaluationCallback(
            every_n_steps=ev.every_n_steps,
            num_samples=ev.num_samples,
            reference=reference_statistics(cfg, extractor),
            sampling=cfg.sampling,
            out_dir=cfg.run_dir / "eval",
            metrics=ev.metrics,
            batch_size=ev.batch_size,
            seed=cfg.seed,
            extractor=extractor,
            reference_set=f"statistics file {ev.stats}"
            if ev.stats
            else f"{cfg.data.name} training split, {ev.reference_num or 'all'} images",
        )
    ]


def method_callbacks(cfg: ExperimentConfig) -> list[Callback]:
    """What the config's training method needs in any Trainer: the guard against non-finite
    steps and, with ``ema.enabled``, the EMA (which swaps the average in for validation and
    stores it in checkpoints). Callbacks that should see the EMA weights at validation go
    before these in the Trainer's list."""
    callbacks: list[Callback] = [NonFiniteGuard(cfg.trainer.nonfinite)]
    if cfg.ema.enabled and cfg.ema.kind == "power":
        every = cfg.ema.snapshot_every_n_steps or cfg.checkpoint.every_n_steps
        snapshots = cfg.run_dir / SNAPSHOT_DIR
        callbacks.append(PowerEMA(cfg.ema.std_rel, snapshots, every, to_dict(cfg)))
    elif cfg.ema.enabled:
        callbacks.append(EMA(decay=cfg.ema.decay))
    return callbacks


def build_callbacks(cfg: ExperimentConfig) -> list[Callback]:
    """The run's callbacks: checkpoints, logging, progress, sample grids, evaluation and the
    method's own (:func:`method_callbacks`)."""
    callbacks: list[Callback] = [
        RunCheckpoint(
            dirpath=str(cfg.run_dir / "checkpoints"),
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            every_n_train_steps=cfg.checkpoint.every_n_steps,
            save_top_k=-1 if cfg.checkpoint.keep_periodic else 0,
            save_last=True,
            enable_version_counter=False,  # always last.ckpt, never last-v1.ckpt
        ),
        LearningRateMonitor(logging_interval="step"),
        *logging_callbacks(cfg),
        StepProgressBar(refresh_rate=10),
        SampleGridCallback(
            cfg.run_dir / "samples",
            grid_sampling(cfg),
            num=cfg.sample_grid.num,
            every_n_steps=cfg.sample_grid.every_n_steps,
            seed=cfg.seed,
        ),
        # before EMA: EMA swaps the averaged weights back out at validation end
        *evaluation_callbacks(cfg),
    ]
    if cfg.trainer.compile != "none":
        callbacks.append(CompileTimer(cfg.trainer.compile))
    return [*callbacks, *method_callbacks(cfg)]


def trainer_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config's ``trainer`` section as ``L.Trainer`` keyword arguments (steps, devices,
    precision, gradient clipping, validation schedule), for a Trainer of one's own."""
    t = cfg.trainer
    return dict(
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
        # None for "all": Lightning announces an explicit 1.0 in an info line
        limit_val_batches=None if t.limit_val_batches == 1.0 else t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        num_sanity_val_steps=0,
    )


def build_trainer(
    cfg: ExperimentConfig, callbacks: Sequence[Callback] = (), resume_step: int = 0
) -> L.Trainer:
    """The Trainer for ``cfg``; ``callbacks`` are added to the configured ones; ``resume_step``
    is the step a resumed run continues from (its log is continued from there)."""
    return L.Trainer(
        **trainer_settings(cfg),
        logger=build_logger(cfg, resume_step),
        callbacks=[*build_callbacks(cfg), *callbacks],
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=False,  # the start banner gives the parameter count
    )


def resume_checkpoint(cfg: ExperimentConfig) -> ResumePoint | None:
    """The checkpoint that ``cfg.resume`` continues from (None: start fresh), decided before any
    data is read. Never deletes or changes a file."""
    if cfg.resume == "none":
        existing = run_checkpoints(cfg.run_dir)
        if existing:
            raise ConfigError(
                f"{cfg.run_dir} already holds checkpoints ({existing[0].name}): resume=auto "
                "continues that run; for a new run pick another name= or out_dir="
            )
        return None
    if cfg.resume != "auto":
        path = Path(cfg.resume)
        verify_checkpoint(path)
        ckpt = load_checkpoint(path, mmap=True, verify=False)
        return ResumePoint(path, int(ckpt.get("global_step", 0)), checkpoint_config(ckpt))
    point = find_resume_checkpoint(cfg.run_dir)
    if point is None:
        return None
    for reason in point.skipped:
        rank_zero_warn(f"resume=auto: passing over {reason}")
    changes = config_changes(point.config, cfg)
    if changes:
        raise ConfigError(
            f"{cfg.run_dir} holds a run with a different config ({'; '.join(changes[:5])}): "
            "for a new run pick another name= or out_dir=; to continue that run with these "
            f"changes, pass resume={point.path}"
        )
    older = " (the newest valid checkpoint)" if point.skipped else ""
    done = (
        f"; the run is complete (trainer.max_steps={cfg.trainer.max_steps}): raise "
        "trainer.max_steps to train longer"
        if point.step >= cfg.trainer.max_steps
        else ""
    )
    rank_zero_info(f"resume=auto: continuing from {point.path}{older} at step {point.step}{done}")
    return point


def check_continuable(module: ScoreModule, point: ResumePoint, cfg: ExperimentConfig) -> None:
    """Refuse, before anything is written, a checkpoint that the configured run cannot continue:
    weights that do not fit the network, or EMA switched on or off."""
    ckpt = load_checkpoint(point.path, mmap=True, verify=False)
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    reshaped = [k for k in ours.keys() & theirs.keys() if ours[k] != theirs[k]]
    problems = []
    if ours.keys() != theirs.keys() or reshaped:
        problems.append(
            f"its weights do not fit the configured network ({len(ours.keys() - theirs.keys())} "
            f"missing, {len(theirs.keys() - ours.keys())} unexpected, {len(reshaped)} of "
            "another shape)"
        )
    if ("current_model_state" in ckpt) != cfg.ema.enabled:
        problems.append(f"it was {'not ' * cfg.ema.enabled}trained with EMA")
    if not problems:
        return
    changes = config_changes(point.config, cfg)
    keys = [change.split(":")[0] for change in changes]
    names = [change for change in changes if change.split(":")[0].endswith(".name")]
    differ = f"{', '.join(keys)} ({'; '.join(names)})" if names else ", ".join(keys) or "none"
    raise ConfigError(
        f"resume={point.path} cannot continue this run: {' and '.join(problems)}; "
        f"config keys that differ: {differ}; for a new run pick another name= or out_dir="
    )


class RunDirectory(Callback):
    """Writes ``config.yaml`` and removes temporary files of killed checkpoint writers once the
    fit has started (data set up, checkpoint restored): a run that fails earlier changes nothing."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for directory in (self.cfg.run_dir / "checkpoints", self.cfg.run_dir):
            for path in remove_orphaned_temp_files(directory):
                rank_zero_info(f"removed {path}, left by a checkpoint write that was killed")
        save_config(self.cfg, self.cfg.run_dir / "config.yaml")


class ConfiguredOptimizer(Callback):
    """After resuming with changed ``optim.*`` values, the optimizer and LR schedule run with the
    config's values rather than the checkpoint's (restoring the optimizer state would otherwise
    bring back the old learning rate, betas, eps and weight decay)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fresh_optimizers, fresh_schedulers = _init_optimizers_and_lr_schedulers(pl_module)
        for live, fresh in zip(trainer.optimizers, fresh_optimizers, strict=True):
            for live_group, fresh_group in zip(live.param_groups, fresh.param_groups, strict=True):
                live_group.update({k: v for k, v in fresh_group.items() if k != "params"})
        for live, fresh in zip(trainer.lr_scheduler_configs, fresh_schedulers, strict=True):
            scheduler = live.scheduler
            scheduler.base_lrs = list(fresh.scheduler.base_lrs)  # type: ignore[attr-defined]
            # Recompute the current rates from the new base rates and (new) schedule.
            scheduler.last_epoch -= 1  # type: ignore[attr-defined]
            scheduler.step()


@rank_zero_only
def _announce(text: str) -> None:
    print(text, flush=True)


def train(cfg: ExperimentConfig, callbacks: Sequence[Callback] = ()) -> Path:
    """Run training for ``cfg`` (continuing as ``cfg.resume`` says) and return the run directory.

    The run directory is locked for the whole run (a second writer is refused, see
    ``run_lock.py``). A run stopped by SIGTERM saves ``last`` and exits with status 143
    (``SystemExit``); by Ctrl-C, the same with status 130.
    """
    with run_lock(cfg.run_dir, "lscore train"):
        return _train(cfg, callbacks)


def _train(cfg: ExperimentConfig, callbacks: Sequence[Callback]) -> Path:
    problem = hardware_problem(cfg)
    if problem:
        raise ConfigError(problem)
    check_network_fits(cfg)
    point = resume_checkpoint(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.data, seed=cfg.seed)
    module = ScoreModule.from_config(cfg)
    interrupt = SaveOnInterrupt()
    own: list[Callback] = [RunDirectory(cfg), interrupt]
    if point is not None:
        check_continuable(module, point, cfg)
        changes = config_changes(point.config, cfg)  # only resume=<path> gets here with changes
        if changes:
            rank_zero_warn(
                f"resume={point.path}: continuing with a changed config: {'; '.join(changes)}"
            )
        if any(change.startswith("optim.") for change in changes):
            own.append(ConfiguredOptimizer())
    apply_speed_options(module.score_model, cfg.trainer)
    parameters = sum(p.numel() for p in module.score_model.parameters())
    _announce(start_banner(cfg, point.step if point else 0, parameters))
    trainer = build_trainer(cfg, [*own, *callbacks], resume_step=point.step if point else 0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        if point is not None:  # a resumed run's checkpoint directory is expected to be full
            warnings.filterwarnings("ignore", message="Checkpoint directory .* not empty")
        try:
            trainer.fit(
                module,
                datamodule=datamodule,
                ckpt_path=point.path if point else None,
                weights_only=True,
            )
        except SIGTERMException:
            code = INTERRUPTED_EXIT_CODE if interrupt.received else PREEMPTED_EXIT_CODE
            raise SystemExit(code) from None
    if trainer.is_global_zero:
        bar = trainer.progress_bar_callback
        first_step = bar.first_step if isinstance(bar, StepProgressBar) else 0
        seconds = time.perf_counter() - start
        print(run_summary(cfg, trainer.callback_metrics, first_step, trainer.global_step, seconds))
    return cfg.run_dir
