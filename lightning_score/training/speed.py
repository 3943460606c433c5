"""Speed options of a run (``trainer.compile``, ``trainer.channels_last``) and of sampling
(``lscore sample / ablate --compile --bf16``).

Compilation is ``nn.Module.compile`` on the score model's network, in place: the module keeps its
class and its parameter names (no ``_orig_mod.`` prefix in checkpoints), and Lightning, DDP, the
EMA and checkpoint loading see the same module as without it. The network, not the
``ScoreModel`` around it, because training calls ``ScoreModel.network`` and sampling calls the
model: both go through the network. The first call compiles (the first training step, and once
more for sampling without gradients); :class:`CompileTimer` reports how long the first training
step took.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_score.config import TrainerConfig
from lightning_score.nets import ScoreModel


def apply_speed_options(model: ScoreModel, options: TrainerConfig) -> None:
    """Put the 4-D (convolution) weights of ``model`` in channels_last and compile its network in
    place, as ``options`` say (an analytic score function has nothing to compile)."""
    if options.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if options.compile != "none" and isinstance(model.net, nn.Module):
        model.net.compile(mode=None if options.compile == "default" else options.compile)


class CompileTimer(L.Callback):
    """Reports once how long the first training step took; with ``trainer.compile`` that is
    mostly compilation. Sent to the loggers as ``perf/first_step_seconds``."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self._start: float | None = None
        self.seconds: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if self.seconds is not None or self._start is None:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.seconds = time.perf_counter() - self._start
        rank_zero_info(
            f"trainer.compile={self.mode}: the first training step took {self.seconds:.1f} s, "
            "compilation included"
        )
        for logger in trainer.loggers:
            logger.log_metrics({"perf/first_step_seconds": self.seconds}, step=trainer.global_step)


COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


class BF16Network(nn.Module):
    """A network run under bfloat16 autocast with a float32 result: the sampler's own arithmetic
    (its state, steps, noise and the parameterization's scaling) stays float32."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, *args: Any, **kwargs: Any):
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            out = self.net(x, c_noise, *args, **kwargs)
        return out.float()


def for_sampling(model: ScoreModel, compile_mode: str = "none", bf16: bool = False) -> ScoreModel:
    """``model`` made faster for sampling, in place: its network under bf16 autocast and/or
    compiled (``reduce-overhead`` adds CUDA graphs, which pay for the many small steps of a
    sampler at a fixed batch size). Measure the sample difference a reduced precision makes
    against float32 on the same seeds (``bench/sampling_throughput.py --bf16``)."""
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode '{compile_mode}': choose one of {COMPILE_MODES}")
    if not isinstance(model.net, nn.Module):
        return model  # an analytic score: nothing to speed up
    if bf16:
        model.net = BF16Network(model.net)
    if compile_mode != "none":
        model.net.compile(mode=None if compile_mode == "default" else compile_mode)
    return model
