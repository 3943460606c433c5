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
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor

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
        average = [*self._average_model.module.parameters(), *self._average_model.module.buffers()]
        current = [*pl_module.parameters(), *pl_module.buffers()]
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]]
        groups = defaultdict(lambda: ([], []))
        self._copied = ([], [])
        for a, c in zip(average, current, strict=True):
            pair = groups[(a.device, a.dtype)] if a.is_floating_point() else self._copied
            pair[0].append(a)
            pair[1].append(c)
        self._groups = list(groups.values())

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if trainer.global_step > self._latest_update_step and self.should_update(
            step_idx=trainer.global_step - 1
        ):
            state = pl_module.step_state if isinstance(pl_module, ReportsSteps) else None
            self.update(state.skipped if state is not None else None)
            self._latest_update_step = trainer.global_step

    @torch.no_grad()
    def update(self, skipped: Tensor | None = None) -> None:
        """One EMA step over all tensors; ``skipped`` (a device 0/1 flag) of 1 leaves them as
        they are (the first update copies regardless: the weights have not moved yet)."""
        assert self._average_model is not None
        for average, current in self._groups:
            if self._updates == 0:
                torch._foreach_copy_(average, current)
            elif skipped is None:
                torch._foreach_lerp_(average, current, 1.0 - self.decay)
            else:
                # a 0-d device weight: lerp would read it back to the host as a Python scalar
                weight = ((1.0 - skipped) * (1.0 - self.decay)).to(average[0].dtype)
                delta = torch._foreach_sub(current, average)
                torch._foreach_mul_(delta, weight)
                torch._foreach_add_(average, delta)
        if self._copied[0]:
            torch._foreach_copy_(*self._copied)
        self._average_model.n_averaged.add_(1)
        self._updates += 1
