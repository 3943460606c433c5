"""From Python as Lightning users expect: ``ScoreModule.load_from_checkpoint`` and a Trainer of
one's own with one's own callbacks and logger, EMA included."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from tiny_checkpoint import ROOT

from lightning_score.data import build_datamodule
from lightning_score.experiment import load_config
from lightning_score.training.checkpoint import CheckpointError, load_checkpoint
from lightning_score.training.ema import EMA
from lightning_score.training.module import ScoreModule
from lightning_score.training.run import method_callbacks, trainer_settings

TINY = [
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "model.kwargs.channels=[8,16]",
    "data.batch_size=16",
]


def _weights(module: ScoreModule) -> dict[str, torch.Tensor]:
    return {f"score_model.{k}": v for k, v in module.score_model.state_dict().items()}


def test_load_from_checkpoint_rebuilds_the_module_from_its_config(checkpoint: Path) -> None:
    ckpt = load_checkpoint(checkpoint)
    ema = ScoreModule.load_from_checkpoint(checkpoint)
    raw = ScoreModule.load_from_checkpoint(checkpoint, ema=False)
    assert not ema.training and ema.hparams["config"] == ckpt["hyper_parameters"]["config"]
    for module, stored in ((ema, ckpt["state_dict"]), (raw, ckpt["current_model_state"])):
        mine = _weights(module)
        assert mine.keys() == {k for k in stored if k.startswith("score_model.")}
        assert all(torch.equal(mine[k], stored[k]) for k in mine)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(_weights(ema).values(), _weights(raw).values(), strict=True)
    )


def test_load_from_checkpoint_refuses_a_damaged_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        ScoreModule.load_from_checkpoint(bad)


class StepRecorder(L.Callback):
    """A user's callback: the steps it saw, the raw weights after the last step and the weights
    validation ran with (placed before the EMA callback, which swaps back at epoch end)."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.raw: dict[str, torch.Tensor] = {}
        self.validated_with: dict[str, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(trainer.global_step)
        self.raw = {k: v.clone() for k, v in _weights(pl_module).items()}

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.validated_with = {k: v.clone() for k, v in _weights(pl_module).items()}


def test_own_trainer_fits_with_own_callbacks_logger_and_ema(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [f"out_dir={tmp_path}", *TINY])
    L.seed_everything(cfg.seed, verbose=False)
    recorder = StepRecorder()
    trainer = L.Trainer(
        **trainer_settings(cfg),
        callbacks=[recorder, *method_callbacks(cfg)],
        logger=CSVLogger(tmp_path / "mine", name="", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = ScoreModule.from_config(cfg)
    trainer.fit(module, datamodule=build_datamodule(cfg.data, seed=cfg.seed))
    assert recorder.steps == [1, 2, 3]
    (ema,) = [c for c in trainer.callbacks if isinstance(c, EMA)]
    # validation ran on the EMA weights (swapped in by the callback), which differ from the raw
    average = ema._average_model.module.state_dict()
    assert recorder.validated_with
    assert all(torch.equal(v, average[k]) for k, v in recorder.validated_with.items())
    assert any(not torch.equal(v, recorder.raw[k]) for k, v in recorder.validated_with.items())
    with (tmp_path / "mine" / "metrics.csv").open() as fh:
        columns = next(csv.reader(fh))
    assert "train/loss" in columns and "val/loss" in columns
    # a checkpoint of one's own Trainer loads back with the EMA weights in front
    path = tmp_path / "mine.ckpt"
    trainer.save_checkpoint(path, weights_only=False)
    loaded = ScoreModule.load_from_checkpoint(path)
    assert all(torch.equal(v, _weights(loaded)[k]) for k, v in recorder.validated_with.items())


def test_the_package_exports_its_python_names_lazily() -> None:
    """``import lightning_score`` stays free of torch; each exported name resolves on first use."""
    code = "import sys, lightning_score\nprint('torch after import:', 'torch' in sys.modules)\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert "torch after import: False" in result.stdout
    import lightning_score
    from lightning_score.interop.pipeline import ScorePipeline

    assert all(getattr(lightning_score, name) is not None for name in lightning_score.__all__)
    assert lightning_score.ScorePipeline is ScorePipeline
    assert lightning_score.ScoreModule is ScoreModule
    with pytest.raises(AttributeError, match="no attribute 'ScorePipelin'"):
        lightning_score.ScorePipelin  # noqa: B018
