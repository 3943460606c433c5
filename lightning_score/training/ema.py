"""Exponential moving average of the weights for the cost of one fused kernel per training step.

``ema = decay * ema + (1 - decay) * w`` after every update, the first update copying ``w``, as
Lightning's ``EMAWeightAveraging`` computes it. That callback goes through
``AveragedModel.update_parameters``, which reads ``n_averaged == 0`` back from the device every
step (a host-device sync) and updates tensor by tensor; it also keeps the average on the device the
module had at ``setup``, which is the CPU (Lightning moves the module to the GPU after ``setup``),
so every step copies all weights off the GPU. Here the average follows the module to its device at
fit start, the number of updates is mirrored on the host, and one ``torch._foreach_lerp_`` per
(device, dtype) updates all tensors. Swapping the average in for validation and sample grids, the
checkpoint layout (average in ``state_dict``, raw weights in ``current_model_state``, the count in
``averaging_state``) and loading stay Lightning's ``WeightAveraging``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor

from lightning_score.outputs import atomic_path
from lightning_score.training.posthoc_ema import SNAPSHOT_FORMAT, gamma_from_std_rel, power_beta
from lightning_score.training.reliability import ReportsSteps


class EMA(WeightAveraging):
    """EMA of parameters and floating-point buffers (non-floating buffers are copied).

    A step that :class:`~lightning_score.training.reliability.NonFiniteGuard` dropped
    (``StepState.skipped`` is 1) leaves the average as it was, decided on the device.
    """

    def __init__(self, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        super().__init__(use_buffers=True)
        self.decay = decay
        self._updates = 0  # host mirror of the AveragedModel's n_averaged
        self._groups: list[tuple[list[Tensor], list[Tensor]]] = []  # (average, current) floating
        self._copied: tuple[list[Tensor], list[Tensor]] = ([], [])
        self._names: list[list[str]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._updates = 0

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        if self._average_model is not None:  # one read, at load: still on the CPU here
            self._updates = int(self._average_model.n_averaged)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self._average_model is not None
        self._average_model.to(pl_module.device)
        module = self._average_model.module
        named = [*module.named_parameters(), *module.named_buffers()]
        current = [*pl_module.parameters(), *pl_module.buffers()]
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]]
        groups = defaultdict(lambda: ([], []))
        names: dict[tuple[torch.device, torch.dtype], list[str]] = defaultdict(list)
        self._copied = ([], [])
        for (name, a), c in zip(named, current, strict=True):
            key = (a.device, a.dtype)
            pair = groups[key] if a.is_floating_point() else self._copied
            pair[0].append(a)
            pair[1].append(c)
            if a.is_floating_point():
                names[key].append(name)
        self._groups = list(groups.values())
        self._names = list(names.values())  # the names of each group's tensors

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if trainer.global_step > self._latest_update_step and self.should_update(
            step_idx=trainer.global_step - 1
        ):
            state = pl_module.step_state if isinstance(pl_module, ReportsSteps) else None
            self.update(state.skipped if state is not None else None)
            self._latest_update_step = trainer.global_step

    def _decay(self) -> float:
        """The decay of the next update (the count of updates so far is ``self._updates``)."""
        return self.decay

    @torch.no_grad()
    def update(self, skipped: Tensor | None = None) -> None:
        """One EMA step over all tensors; ``skipped`` (a device 0/1 flag) of 1 leaves them as
        they are (the first update copies regardless: the weights have not moved yet)."""
        assert self._average_model is not None
        for average, current in self._groups:
            _average_step(average, current, self._updates, self._decay(), skipped)
        if self._copied[0]:
            torch._foreach_copy_(*self._copied)
        self._average_model.n_averaged.add_(1)
        self._updates += 1


def _average_step(
    average: list[Tensor], current: list[Tensor], updates: int, decay: float, skipped: Tensor | None
) -> None:
    """average <- decay * average + (1 - decay) * current in one fused kernel; the first update
    (``updates`` 0) copies; a ``skipped`` device flag of 1 leaves ``average`` unchanged."""
    if updates == 0:
        torch._foreach_copy_(average, current)
    elif skipped is None:
        torch._foreach_lerp_(average, current, 1.0 - decay)
    else:
        # a 0-d device weight: lerp would read it back to the host as a Python scalar
        weight = ((1.0 - skipped) * (1.0 - decay)).to(average[0].dtype)
        delta = torch._foreach_sub(current, average)
        torch._foreach_mul_(delta, weight)
        torch._foreach_add_(average, delta)


class PowerEMA(EMA):
    """Power-function EMAs of the widths ``std_rel`` (EDM2), one fused update per profile.

    The first width is the average that Lightning swaps in for validation and stores as the
    checkpoint's EMA weights; the others ride along in the checkpoint (``power_ema``), so a resumed
    run continues every profile exactly. Every ``snapshot_every`` steps rank zero writes all
    profiles to ``snapshot_dir/step{step:07d}.pt`` (written whole, never over an existing file),
    the input of ``lscore posthoc-ema``.
    """

    def __init__(
        self,
        std_rel: Sequence[float],
        snapshot_dir: Path | None = None,
        snapshot_every: int = 0,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(decay=0.5)  # the decay follows the step count: see _decay
        self.std_rel = [float(s) for s in std_rel]
        self.gammas = [gamma_from_std_rel(s) for s in self.std_rel]
        self.snapshot_dir = snapshot_dir
        self.snapshot_every = snapshot_every
        self.config = config or {}
        self._extra: list[list[list[Tensor]]] = []  # [profile - 1][group] -> tensors
        self._loaded: list[dict[str, Tensor]] | None = None

    def _decay(self) -> float:
        return power_beta(self._updates + 1, self.gammas[0])

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._extra = [
            [[a.clone() for a in avg] for avg, _ in self._groups] for _ in self.gammas[1:]
        ]
        if self._loaded is not None:
            for profile, state in zip(self._extra, self._loaded, strict=True):
                for tensors, names in zip(profile, self._names, strict=True):
                    torch._foreach_copy_(tensors, [state[n].to(tensors[0].device) for n in names])
            self._loaded = None

    @torch.no_grad()
    def update(self, skipped: Tensor | None = None) -> None:
        """Every profile takes the step even when the guard dropped it: the raw weights then stayed
        as they were (theta_t = theta_{t-1}), so the usual update keeps each average exactly the
        power profile over the step count that the post-hoc solver assumes."""
        for gamma, profile in zip(self.gammas[1:], self._extra, strict=True):
            decay = power_beta(self._updates + 1, gamma)
            for tensors, (_, current) in zip(profile, self._groups, strict=True):
                _average_step(tensors, current, self._updates, decay, None)
        super().update(None)  # the first profile, and the update count

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, idx)
        step = trainer.global_step
        due = self.snapshot_every and step % self.snapshot_every == 0
        if self.snapshot_dir and due and trainer.is_global_zero:
            self.write_snapshot(step, pl_module)

    def profile_states(self, pl_module: L.LightningModule) -> list[dict[str, Tensor]]:
        """Every profile as a state dict with the checkpoint's keys (on the CPU)."""
        assert self._average_model is not None
        first = {
            k: v.detach().cpu().clone() for k, v in self._average_model.module.state_dict().items()
        }
        states = [first]
        for profile in self._extra:
            state = dict(first)
            for tensors, names in zip(profile, self._names, strict=True):
                state.update(
                    {
                        n: t.detach().cpu().clone()
                        for n, t in zip(names, tensors, strict=True)
                        if n in first
                    }
                )
            states.append(state)
        return states

    def write_snapshot(self, step: int, pl_module: L.LightningModule) -> Path | None:
        """All profiles at ``step``; an existing snapshot of that step is kept (a resumed run
        reaches the same step again with the same weights)."""
        assert self.snapshot_dir is not None
        path = self.snapshot_dir / f"step{step:07d}.pt"
        if path.exists():
            return None
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        snapshot = {
            "format": SNAPSHOT_FORMAT,
            "step": step,
            "updates": self._updates,
            "std_rel": self.std_rel,
            "gamma": self.gammas,
            "config": self.config,
            "profiles": self.profile_states(pl_module),
        }
        with atomic_path(path) as tmp:
            torch.save(snapshot, tmp)
        return path

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        checkpoint["power_ema"] = {
            "std_rel": self.std_rel,
            "profiles": self.profile_states(pl_module)[1:],
        }

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        stored = checkpoint.get("power_ema")
        if stored is None or [float(s) for s in stored["std_rel"]] != self.std_rel:
            raise ValueError(
                f"this checkpoint holds no power EMA of widths {self.std_rel} (ema.std_rel): "
                "resume it with the ema settings it was trained with"
            )
        self._loaded = stored["profiles"]
