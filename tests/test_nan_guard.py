"""Non-finite guard: an injected NaN stops the run with a message naming the step, the batch's t
range and the last good checkpoint (or, with trainer.nonfinite=skip, drops that update); no
checkpoint with non-finite weights is ever written."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from run_training import tiny_config

import lightning_score.training.module
from lightning_score.training.checkpoint import load_checkpoint
from lightning_score.training.ema import EMA
from lightning_score.training.reliability import AtomicCheckpointIO, NonFiniteError
from lightning_score.training.run import train


def inject_at_call(monkeypatch, call: int, corrupt) -> None:
    """Make the training loss of the ``call``-th training step (1-based) go through ``corrupt``."""
    real, calls = lightning_score.training.module.dsm_loss, [0]

    def dsm_loss(score_fn, *args, **kwargs):
        losses = real(score_fn, *args, **kwargs)
        if "noise" not in kwargs:  # training steps draw their own noise; validation passes it
            calls[0] += 1
            if calls[0] == call:
                return corrupt(losses, score_fn)
        return losses

    monkeypatch.setattr(lightning_score.training.module, "dsm_loss", dsm_loss)


def nan_loss(losses: torch.Tensor, _) -> torch.Tensor:
    return losses * float("nan")


def nan_gradient(losses: torch.Tensor, score_fn) -> torch.Tensor:
    # sqrt has an infinite derivative at 0: the loss stays finite, the gradient becomes 0 * inf
    first = next(score_fn.parameters())
    return losses + torch.sqrt(0.0 * first.sum())


def all_finite(path: Path) -> bool:
    ckpt = load_checkpoint(path)
    states = [ckpt["state_dict"], ckpt.get("current_model_state", {})]
    return all(v.isfinite().all() for state in states for v in state.values())


@pytest.mark.parametrize("fused", ["true", "false"], ids=["on-device", "host-every-step"])
def test_nan_loss_stops_with_step_t_range_and_last_good_checkpoint(tmp_path, monkeypatch, fused):
    inject_at_call(monkeypatch, 5, nan_loss)
    cfg = tiny_config(
        tmp_path,
        "checkpoint.every_n_steps=2",
        "checkpoint.keep_periodic=true",
        "trainer.log_every_n_steps=50",  # on the device, the save at step 6 is the next read
        f"optim.fused={fused}",
    )
    last = tmp_path / "toy2d" / "checkpoints" / "last.ckpt"
    with pytest.raises(NonFiniteError) as info:
        train(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("non-finite loss (nan) at step 5, batch t in [")
    low, high = (float(v) for v in message.split("batch t in [")[1].split("]")[0].split(", "))
    assert cfg.loss.eps <= low < high <= 1.0
    assert f"last good checkpoint: {last} (step 4)" in message
    written = sorted(p.name for p in last.parent.glob("*.ckpt"))
    assert written == ["last-prev.ckpt", "last.ckpt", "step0000002.ckpt", "step0000004.ckpt"]
    assert load_checkpoint(last)["global_step"] == 4
    assert all(all_finite(p) for p in last.parent.glob("*.ckpt"))


def test_nan_gradient_with_finite_loss_stops_too(tmp_path, monkeypatch):
    inject_at_call(monkeypatch, 5, nan_gradient)
    with pytest.raises(NonFiniteError, match=r"non-finite gradient \(finite loss\) at step 5, "):
        train(tiny_config(tmp_path))
    last = tmp_path / "toy2d" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 3 and all_finite(last)


class Snapshot(L.Callback):
    """Raw weights, Adam's state (moments and step count) and EMA weights before and after
    every update."""

    def __init__(self) -> None:
        self.params = 0
        self.before: dict[int, list[torch.Tensor]] = {}
        self.after: dict[int, list[torch.Tensor]] = {}

    def _state(self, trainer, pl_module) -> list[torch.Tensor]:
        adam = trainer.optimizers[0].state
        moments = [v for p in pl_module.parameters() for v in adam.get(p, {}).values()]
        ema = next(cb for cb in trainer.callbacks if isinstance(cb, EMA))
        averaged = list(ema._average_model.module.parameters())
        self.params = len(averaged)
        return [t.detach().clone() for t in (*pl_module.parameters(), *moments, *averaged)]

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        self.before[trainer.global_step + 1] = self._state(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.after[trainer.global_step] = self._state(trainer, pl_module)


@pytest.mark.parametrize("corrupt", [nan_loss, nan_gradient], ids=["loss", "gradient"])
def test_skip_policy_drops_only_the_bad_update(tmp_path, monkeypatch, corrupt):
    inject_at_call(monkeypatch, 3, corrupt)
    snap = Snapshot()
    with pytest.warns(UserWarning, match=r"at step 3, .*update skipped"):
        run_dir = train(tiny_config(tmp_path, "trainer.nonfinite=skip"), [snap])
    last = run_dir / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 12 and all_finite(last)
    # weights, Adam's moments and step count, and the EMA: all untouched by the skipped update
    unchanged = [torch.equal(a, b) for a, b in zip(snap.before[3], snap.after[3], strict=True)]
    moved = [torch.equal(a, b) for a, b in zip(snap.before[4], snap.after[4], strict=True)]
    assert len(unchanged) == 5 * snap.params  # weights, Adam's exp_avg, exp_avg_sq, step; EMA
    assert all(unchanged) and not any(moved)
    with open(run_dir / "logs" / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["train/skipped_updates"]]
    assert [float(r["train/skipped_updates"]) for r in rows] == [0.0] * 2 + [1.0] * 10


def test_checkpoint_io_refuses_non_finite_weights(tmp_path):
    target = tmp_path / "last.ckpt"
    state = {"w": torch.tensor([1.0, float("inf")])}
    with pytest.raises(
        NonFiniteError, match=r"refusing to write .*non-finite weights in state_dict"
    ):
        AtomicCheckpointIO().save_checkpoint({"state_dict": state, "global_step": 7}, target)
    assert list(tmp_path.iterdir()) == []


def test_on_device_stop_names_the_bad_step_and_drops_every_update_until_it_stops(
    tmp_path, monkeypatch
):
    # The host reads the guard's record at logging steps (every 4th here), so the run stops at
    # step 8; steps 5 to 7 ran but changed neither the weights nor Adam's state (fused Adam's
    # found_inf), and no checkpoint holds them.
    inject_at_call(monkeypatch, 5, nan_loss)
    snap = Snapshot()
    cfg = tiny_config(
        tmp_path,
        "trainer.log_every_n_steps=4",
        "checkpoint.every_n_steps=100",
        "trainer.val_check_interval=100",
    )
    with pytest.raises(NonFiniteError) as info:
        train(cfg, [snap])
    message = str(info.value)
    assert message.startswith("non-finite loss (nan) at step 5, batch t in [")
    assert "(noticed at step 8; the updates in between were dropped)" in message
    assert "last good checkpoint: none written yet" in message
    weights_and_adam = 4 * snap.params
    for step in (5, 6, 7):
        frozen = snap.after[step][:weights_and_adam]
        assert all(torch.equal(a, b) for a, b in zip(snap.after[4], frozen, strict=False))
    assert not (tmp_path / "toy2d" / "checkpoints").exists()
