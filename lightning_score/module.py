"""ScoreModule: trains a time-conditional score network with weighted continuous DSM.

The module holds no data loading and no trainer logic. EMA comes from Lightning's
``EMAWeightAveraging`` callback, which swaps the averaged weights in for validation (so the
validation loss and the sample grids use EMA weights) and stores them as the checkpoint's
``state_dict`` with the raw weights under ``current_model_state``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from lightning_score.config import ExperimentConfig, from_dict, to_dict
from lightning_score.data import data_shape
from lightning_score.losses import TIME_SAMPLERS, dsm_loss, uniform_times
from lightning_score.nets import ScoreModel, build_network
from lightning_score.sde import SDE, SDES


def build_sde(cfg: ExperimentConfig) -> SDE:
    s = cfg.sde
    if s.name == "vesde":
        return SDES[s.name](sigma_min=s.sigma_min, sigma_max=s.sigma_max, N=s.N)
    return SDES[s.name](beta_min=s.beta_min, beta_max=s.beta_max, N=s.N)


def build_score_model(cfg: ExperimentConfig) -> ScoreModel:
    sde = build_sde(cfg)
    net = build_network(cfg.model.name, data_shape(cfg.data), sde, **cfg.model.kwargs)
    return ScoreModel(net, sde)


class ScoreModule(L.LightningModule):
    """Training and validation of ``ScoreModel`` under the config's SDE, loss and optimizer."""

    def __init__(self, config: dict[str, Any] | ExperimentConfig) -> None:
        super().__init__()
        cfg = config if isinstance(config, ExperimentConfig) else from_dict(config)
        # The resolved config rides in every checkpoint as plain data (weights_only-loadable).
        self.save_hyperparameters({"config": to_dict(cfg)})
        self.cfg = cfg
        self.score_model = build_score_model(cfg)
        self.sde = self.score_model.sde
        self.data_shape = data_shape(cfg.data)
        self.is_image = len(self.data_shape) == 3
        bins = cfg.loss.t_bins
        self.val_bin_loss = torch.nn.ModuleList(MeanMetric() for _ in range(bins))
        self.register_buffer("bin_edges", torch.linspace(cfg.loss.eps, self.sde.T, bins + 1))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.score_model(x, t)

    def _prepare(self, batch: Any) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.sde.scale_data(x) if self.is_image else x

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = self._prepare(batch)
        sampler = TIME_SAMPLERS[self.cfg.loss.time_sampler]
        times = sampler(self.sde, x.shape[0], self.cfg.loss.eps, x.device)
        self.last_batch_t = times.t.detach()  # named in the non-finite guard's message
        losses = dsm_loss(
            self.score_model, self.sde, x, times, self.cfg.loss.weighting, self.cfg.loss.reduce
        )
        loss = losses.mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x = self._prepare(batch)
        # Fixed t and noise per batch: validation losses are comparable across evaluations.
        gen = torch.Generator(device=x.device).manual_seed(10_000 + batch_idx)
        times = uniform_times(self.sde, x.shape[0], self.cfg.loss.eps, x.device, generator=gen)
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        losses = dsm_loss(
            self.score_model,
            self.sde,
            x,
            times,
            self.cfg.loss.weighting,
            self.cfg.loss.reduce,
            noise=noise,
        )
        self.log("val/loss", losses.mean(), prog_bar=True, batch_size=x.shape[0], sync_dist=True)
        idx = torch.bucketize(times.t, self.bin_edges[1:-1])
        for i, metric in enumerate(self.val_bin_loss):
            mask = idx == i
            if mask.any():
                metric.update(losses[mask])

    def on_validation_epoch_end(self) -> None:
        edges = self.bin_edges.tolist()
        for i, metric in enumerate(self.val_bin_loss):
            value = metric.compute()  # collective under DDP: every rank computes every bin
            if torch.isfinite(value):
                self.log(f"val_loss_t/{edges[i]:.2f}-{edges[i + 1]:.2f}", value)
            metric.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.cfg.optim
        optimizer = torch.optim.Adam(
            self.parameters(),
            lr=o.lr,
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            weight_decay=o.weight_decay,
        )
        warmup = max(o.warmup_steps, 1)
        # Linear warmup as in the official code: lr * min(step / warmup, 1).
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / warmup, 1.0)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "step"},
        }
