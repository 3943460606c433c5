"""ScoreModule: trains a time-conditional score network with weighted continuous DSM.

The module holds no data loading and no trainer logic. EMA comes from the
:class:`~lightning_score.training.ema.EMA` callback (a Lightning ``WeightAveraging``), which swaps the
averaged weights in for validation (so the validation loss and the sample grids use EMA weights)
and stores them as the checkpoint's ``state_dict`` with the raw weights under
``current_model_state``. Each training step hands its loss and times to the callbacks that watch
it as :attr:`ScoreModule.step_state`; nothing in a step reads a value back from the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric

from lightning_score.config import ExperimentConfig, LossConfig, OptimConfig, to_dict
from lightning_score.data import data_shape
from lightning_score.experiment import build_score_model
from lightning_score.losses import TIME_SAMPLERS, dsm_loss
from lightning_score.nets import ScoreModel
from lightning_score.training.checkpoint import load_score_model
from lightning_score.training.reliability import StepState


def bin_label(value: float) -> str:
    """A bin edge in positional notation with 3 significant digits (0.002, 0.01, 80): metric names
    like ``val_loss_t/0.002-0.0044`` stay readable and parseable for every SDE's time range."""
    return np.format_float_positional(value, precision=3, unique=False, fractional=False, trim="-")


class ScoreModule(L.LightningModule):
    """Training and validation of a ready ``ScoreModel`` with the weighted DSM loss.

    ``config`` is the resolved experiment config as a plain dict: it rides in every checkpoint
    (weights_only-loadable), so sampling, evaluation and likelihood need only the path.
    """

    def __init__(
        self,
        model: ScoreModel,
        loss: LossConfig,
        optim: OptimConfig,
        data_shape: tuple[int, ...],
        config: dict[str, Any],
        label_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.score_model = model
        self.sde = model.sde
        self.loss_cfg = loss
        self.optim_cfg = optim
        self.data_shape = tuple(data_shape)
        self.is_image = len(self.data_shape) == 3
        #: classifier-free guidance: the fraction of labels replaced by "no class" in training
        self.label_dropout = label_dropout
        self._labels_checked = False
        bins = loss.t_bins
        self.val_bin_loss = torch.nn.ModuleList(MeanMetric() for _ in range(bins))
        edges = self.sde.time_bins(bins, loss.eps)
        self.register_buffer("bin_edges", edges.float())
        self.bin_labels = [bin_label(float(e)) for e in edges]
        self.step_state: StepState | None = None  # the last training step's, for the callbacks

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, model: ScoreModel | None = None) -> ScoreModule:
        """The module for a checked config (network, parameterization and SDE built from it, or
        ``model``, already built for it)."""
        return cls(
            model if model is not None else build_score_model(cfg),
            cfg.loss,
            cfg.optim,
            data_shape(cfg.data),
            to_dict(cfg),
            label_dropout=cfg.model.label_dropout,
        )

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Path,
        map_location: str | torch.device | None = None,
        ema: bool = True,
    ) -> ScoreModule:
        """The module of a training checkpoint or an export, rebuilt from the config stored in it.

        Lightning's own ``load_from_checkpoint`` would call ``__init__`` with the saved
        hyperparameters, which hold only the config; here the config builds the network and the
        weights load through the verified, weights-only loader. ``ema`` picks the EMA weights
        (``False``: the raw ones). The module comes back in eval mode; ``Trainer.fit`` switches
        it to training (the optimizer state is not restored: pass ``ckpt_path`` to ``fit`` to
        continue a run).
        """
        model, cfg = load_score_model(checkpoint_path, ema=ema, map_location=map_location or "cpu")
        return cls.from_config(cfg, model=model).eval()

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.score_model(x, t, labels)

    def _prepare(self, batch: Any) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.sde.scale_data(x) if self.is_image else x

    def _labels(self, batch: Any, drop: bool) -> Tensor | None:
        """The batch's labels for a class-conditional model (None for an unconditional one);
        with ``drop``, each is replaced by "no class" with probability ``label_dropout``."""
        classes = self.score_model.num_classes
        if not classes:
            return None
        labels = batch[1].long()
        if not self._labels_checked:  # one device read, at the first step: labels out of range
            top = int(labels.max())
            if top >= classes or int(labels.min()) < 0:
                raise ValueError(
                    f"the data has label {top}, outside [0, model.num_classes={classes}): set "
                    "model.num_classes to the number of classes of the data set"
                )
            self._labels_checked = True
        if drop and self.label_dropout > 0:
            dropped = torch.rand(labels.shape, device=labels.device) < self.label_dropout
            labels = labels.masked_fill(dropped, classes)
        return labels

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = self._prepare(batch)
        labels = self._labels(batch, drop=True)
        lc = self.loss_cfg
        times = TIME_SAMPLERS[lc.time_sampler](self.sde, x.shape[0], lc, x.device)
        losses = dsm_loss(self.score_model, x, times, lc.weighting, lc.reduce, labels=labels)
        loss = losses.mean()
        self.step_state = StepState(loss=loss.detach(), t=times.t.detach())
        # Not prog_bar=True: Lightning would turn it into a Python float (a sync) every step;
        # the progress bar reads it at logging steps (callbacks_logging.LossProgressBar).
        self.log("train/loss", loss, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x = self._prepare(batch)
        # Fixed t and noise per batch, drawn like training's: validation losses estimate the
        # training objective and are comparable across evaluations.
        lc = self.loss_cfg
        gen = torch.Generator(device=x.device).manual_seed(10_000 + batch_idx)
        times = TIME_SAMPLERS[lc.time_sampler](self.sde, x.shape[0], lc, x.device, generator=gen)
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        labels = self._labels(batch, drop=False)
        losses = dsm_loss(
            self.score_model, x, times, lc.weighting, lc.reduce, noise=noise, labels=labels
        )
        self.log("val/loss", losses.mean(), prog_bar=True, batch_size=x.shape[0], sync_dist=True)
        idx = torch.bucketize(times.t, self.bin_edges[1:-1])
        for i, metric in enumerate(self.val_bin_loss):
            mask = idx == i
            if mask.any():
                metric.update(losses[mask])

    def on_validation_epoch_end(self) -> None:
        labels = self.bin_labels
        for i, metric in enumerate(self.val_bin_loss):
            value = metric.compute()  # collective under DDP: every rank computes every bin
            if torch.isfinite(value):
                self.log(f"val_loss_t/{labels[i]}-{labels[i + 1]}", value)
            metric.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim_cfg
        settings = dict(lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)
        # 16-mixed: the GradScaler must unscale before clipping, which a fused step does too late
        fused = o.fused and not (self._trainer and self.trainer.precision == "16-mixed")
        try:
            optimizer = torch.optim.Adam(self.parameters(), fused=fused or None, **settings)
        except RuntimeError as err:  # no fused kernel for this device or dtype
            rank_zero_warn(f"optim.fused: {str(err).splitlines()[0]}; using the multi-tensor Adam")
            optimizer = torch.optim.Adam(self.parameters(), **settings)
        warmup = max(o.warmup_steps, 1)
        # Linear warmup as in the official code: lr * min(step / warmup, 1).
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / warmup, 1.0)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "step"},
        }

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the total gradient norm, on the device (nothing is read back).

        Done here rather than by Lightning's precision plugin, which refuses any fused optimizer
        under mixed precision (a GradScaler would still have the gradients scaled); bf16 has no
        scaler, and 16-mixed uses the unfused Adam, unscaled before this hook.
        """
        if gradient_clip_algorithm not in (None, "norm"):
            raise ValueError(f"only norm clipping is configured, got {gradient_clip_algorithm}")
        if gradient_clip_val:
            with_grads = [p for p in self.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(with_grads, gradient_clip_val)
