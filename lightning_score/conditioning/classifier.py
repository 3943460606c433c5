"""A noise-conditional classifier p_t(y | x_t) for classifier guidance (Song et al. 2021, sec. 5
and app. I; the official JAX code's time-dependent classifier).

It is trained with cross-entropy on perturbed data x_t = alpha(t) x_0 + std(t) z from the same
SDE as the score model it guides, so its gradient grad_x log p_t(y | x_t) is the term Bayes'
rule adds to the score (:func:`lightning_score.conditioning.guidance.classifier_guided`). The network is a
small ResNet of the NCSN++ blocks; it sees its input scaled to unit variance at every noise level
and the noise level as ln(sigma) / 4 (EDM's preconditioning, ``EDMParameterization``), so one
design serves every SDE.

A checkpoint holds its config (``hyper_parameters["classifier_config"]``); loading it checks
nothing but itself, and :func:`check_classifier_fits` refuses a classifier trained for another
SDE or data shape than the score model it would guide.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_score.config import (
    ClassifierConfig,
    ExperimentConfig,
    check_finite,
    check_name_and_seed,
    config_from_dict,
    read_config,
    require,
    require_choice,
    save_config,
    to_dict,
)
from lightning_score.data import check_labels, data_shape, validate_data_config
from lightning_score.losses import TIME_SAMPLERS
from lightning_score.nets.layers import FourierEmbedding, Resample, ResBlock, conv2d, group_norm
from lightning_score.nets.layers import linear as dense
from lightning_score.parameterization import EDMParameterization
from lightning_score.run_lock import run_lock
from lightning_score.sde import SDE, batch_broadcast, build_sde, validate_sde_config
from lightning_score.training.checkpoint import CheckpointError, load_checkpoint

MODEL_PREFIX = "classifier."
#: the noise-level samplers that make sense for a classifier (importance sampling belongs to the
#: likelihood weighting of the score loss)
CLASSIFIER_TIME_SAMPLERS = ("uniform", "lognormal")


class NoiseConditionalClassifier(nn.Module):
    """``classifier(x_t, t) -> logits`` of p_t(y | x_t) for images ``data_shape`` (C, H, W)."""

    def __init__(
        self,
        sde: SDE,
        data_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        blocks_per_level: int = 2,
        dropout: float = 0.1,
        sigma_data: float = 0.5,
    ) -> None:
        super().__init__()
        if len(data_shape) != 3:
            raise ValueError(
                f"the noisy classifier takes images (C, H, W), got data of shape {tuple(data_shape)}"
            )
        self.sde = sde
        self.precond = EDMParameterization(sde, sigma_data)
        self.num_classes = num_classes
        self.data_shape = tuple(data_shape)
        width = channels[0]
        temb_dim = 4 * width
        self.embed = FourierEmbedding(width, scale=16.0)
        self.temb_mlp = nn.Sequential(
            dense(2 * width, temb_dim), nn.SiLU(), dense(temb_dim, temb_dim)
        )
        self.conv_in = conv2d(data_shape[0], width)
        self.blocks = nn.ModuleList()
        ch = width
        for level, out_ch in enumerate(channels):
            for _ in range(blocks_per_level):
                self.blocks.append(ResBlock("ddpm", ch, out_ch, temb_dim, dropout, True, 0.0))
                ch = out_ch
            if level != len(channels) - 1:
                self.blocks.append(Resample(ch, None, False, True, False, (1, 3, 3, 1)))
        self.norm = group_norm(ch)
        self.head = dense(ch, num_classes)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        temb = self.temb_mlp(self.embed(self.precond.c_noise(t)).to(x.dtype))
        h = self.conv_in(batch_broadcast(self.precond.c_in(t), x) * x)
        for block in self.blocks:
            h = block(h, temb) if isinstance(block, ResBlock) else block(h)
        return self.head(F.silu(self.norm(h)).mean(dim=(2, 3)))


def validate_classifier_config(cfg: ClassifierConfig) -> ClassifierConfig:
    """Every section's checks, one line naming the key; fills the SDE's open defaults."""
    check_name_and_seed(cfg.name, cfg.seed)
    check_finite(cfg)
    validate_sde_config(cfg.sde)
    validate_data_config(cfg.data)
    require(cfg.num_classes >= 2, f"num_classes must be >= 2, got {cfg.num_classes}")
    check_labels(cfg.num_classes, cfg.data, key="num_classes")
    require(
        len(data_shape(cfg.data)) == 3,
        f"the noisy classifier takes images; data.name='{cfg.data.name}' is not an image set",
    )
    net = cfg.net
    require(
        len(net.channels) > 0 and min(net.channels) >= 4,
        f"net.channels must be a non-empty list of widths >= 4, got {list(net.channels)}",
    )
    size = cfg.data.image_size
    require(
        size % 2 ** (len(net.channels) - 1) == 0,
        f"data.image_size={size} must be divisible by 2^(len(net.channels) - 1)",
    )
    require(net.blocks_per_level >= 1, "net.blocks_per_level must be >= 1")
    require(0 <= net.dropout < 1, f"net.dropout must lie in [0, 1), got {net.dropout}")
    require(net.sigma_data > 0, f"net.sigma_data must be > 0, got {net.sigma_data}")
    require_choice(cfg.noise.time_sampler, set(CLASSIFIER_TIME_SAMPLERS), "noise.time_sampler")
    sde = build_sde(cfg.sde)
    require(0 < cfg.noise.eps < sde.T, f"noise.eps must lie in (0, {sde.T:g}), got {cfg.noise.eps}")
    require(cfg.noise.p_std > 0, f"noise.p_std must be > 0, got {cfg.noise.p_std}")
    require(cfg.optim.lr > 0, f"optim.lr must be > 0, got {cfg.optim.lr}")
    require(cfg.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
    require(cfg.trainer.max_steps > 0, "trainer.max_steps must be positive")
    require(cfg.checkpoint.every_n_steps > 0, "checkpoint.every_n_steps must be positive")
    require_choice(cfg.logger.name, {"csv", "tensorboard", "wandb"}, "logger.name")
    return cfg


def load_classifier_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> ClassifierConfig:
    """Schema defaults <- YAML <- ``key=value`` overrides, checked."""
    return validate_classifier_config(read_config(path, overrides, ClassifierConfig))


def build_classifier(cfg: ClassifierConfig) -> NoiseConditionalClassifier:
    net = cfg.net
    return NoiseConditionalClassifier(
        build_sde(cfg.sde),
        data_shape(cfg.data),
        cfg.num_classes,
        tuple(net.channels),
        net.blocks_per_level,
        net.dropout,
        net.sigma_data,
    )


class ClassifierModule(L.LightningModule):
    """Cross-entropy of the classifier on x_t, t drawn as ``noise`` says; validation reports the
    accuracy on noisy inputs (same t distribution) and on clean ones (at the SDE's
    ``default_eps``, where sampling ends)."""

    def __init__(self, classifier: NoiseConditionalClassifier, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.save_hyperparameters({"classifier_config": to_dict(cfg)})
        self.classifier = classifier
        self.sde = classifier.sde
        self.noise = cfg.noise
        self.optim_cfg = cfg.optim

    def _perturb(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        times = TIME_SAMPLERS[self.noise.time_sampler](
            self.sde, x.shape[0], self.noise, x.device, generator=generator
        )
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        mean, std = self.sde.marginal_prob(x, times.t)
        return mean + batch_broadcast(std, x) * z, times.t

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, labels = self.sde.scale_data(batch[0]), batch[1].long()
        x_t, t = self._perturb(x)
        logits = self.classifier(x_t, t)
        loss = F.cross_entropy(logits, labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        acc = (logits.argmax(1) == labels).float().mean()
        self.log("train/acc", acc, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, labels = self.sde.scale_data(batch[0]), batch[1].long()
        gen = torch.Generator(device=x.device).manual_seed(10_000 + batch_idx)
        x_t, t = self._perturb(x, gen)
        logits = self.classifier(x_t, t)
        n = x.shape[0]
        self.log("val/loss", F.cross_entropy(logits, labels), batch_size=n, sync_dist=True)
        self.log(
            "val/acc", (logits.argmax(1) == labels).float().mean(), batch_size=n, sync_dist=True
        )
        clean = torch.full((n,), self.sde.default_eps, device=x.device)
        acc = (self.classifier(x, clean).argmax(1) == labels).float().mean()
        self.log("val/acc_clean", acc, prog_bar=True, batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim_cfg
        optimizer = torch.optim.Adam(
            self.parameters(),
            lr=o.lr,
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            weight_decay=o.weight_decay,
        )
        warmup = max(o.warmup_steps, 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / warmup, 1.0)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def train_classifier(cfg: ClassifierConfig) -> Path:
    """Train the classifier of a checked config; returns the run directory, which holds
    ``config.yaml``, ``checkpoints/last.ckpt`` and ``logs/``. A run directory that already
    holds checkpoints, or that another process writes into, is refused (nothing is overwritten).
    Checkpoints are written as the score model's are (``last-prev.ckpt`` kept, SIGTERM and Ctrl-C
    save ``last`` and exit 143 / 130)."""
    with run_lock(cfg.run_dir, "lscore train-classifier"):
        return _train_classifier(cfg)


def _train_classifier(cfg: ClassifierConfig) -> Path:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lightning_score.data import build_datamodule
    from lightning_score.training.loggers import build_logger
    from lightning_score.training.reliability import (
        INTERRUPTED_EXIT_CODE,
        PREEMPTED_EXIT_CODE,
        AtomicCheckpointIO,
        RunCheckpoint,
        SaveOnInterrupt,
    )

    interrupt = SaveOnInterrupt()
    existing = sorted((cfg.run_dir / "checkpoints").glob("*.ckpt"))
    require(
        not existing,
        f"{cfg.run_dir} already holds a classifier ({existing[0].name if existing else ''}): "
        "pick another name= or out_dir=",
    )
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.data, seed=cfg.seed)
    module = ClassifierModule(build_classifier(cfg), cfg)
    t = cfg.trainer
    trainer = L.Trainer(
        default_root_dir=str(cfg.run_dir),
        max_steps=t.max_steps,
        max_epochs=-1,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        gradient_clip_val=t.gradient_clip_val or None,
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None,
        limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps,
        logger=build_logger(cfg),  # type: ignore[arg-type]
        callbacks=[
            RunCheckpoint(
                dirpath=str(cfg.run_dir / "checkpoints"),
                filename="step{step:07d}",
                auto_insert_metric_name=False,
                every_n_train_steps=cfg.checkpoint.every_n_steps,
                save_top_k=-1 if cfg.checkpoint.keep_periodic else 0,
                save_last=True,
                enable_version_counter=False,
            ),
            interrupt,
        ],
        plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0,
        enable_progress_bar=False,
    )
    if trainer.is_global_zero:
        save_config(cfg, cfg.run_dir / "config.yaml")
    try:
        trainer.fit(module, datamodule=datamodule)
    except SIGTERMException:
        code = INTERRUPTED_EXIT_CODE if interrupt.received else PREEMPTED_EXIT_CODE
        raise SystemExit(code) from None
    return cfg.run_dir


def load_classifier(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[NoiseConditionalClassifier, ClassifierConfig]:
    """The classifier of a ``lscore train-classifier`` checkpoint (read weights-only), in eval mode."""
    ckpt = load_checkpoint(path, map_location)
    saved = ckpt.get("hyper_parameters", {})
    if "classifier_config" not in saved:
        raise CheckpointError(
            f"{path} is not a noisy-classifier checkpoint (a score model's?): train one with "
            "`lscore train-classifier`"
        )
    cfg = validate_classifier_config(config_from_dict(saved["classifier_config"], ClassifierConfig))
    classifier = build_classifier(cfg)
    state = {
        k[len(MODEL_PREFIX) :]: v
        for k, v in ckpt["state_dict"].items()
        if k.startswith(MODEL_PREFIX)
    }
    classifier.load_state_dict(state)
    return classifier.to(map_location).eval(), cfg


def _sde_entries(cfg: Any) -> dict[str, Any]:
    """The SDE config entries that fix the marginals p_t (N only discretizes)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "N"}


def check_classifier_fits(classifier_cfg: ClassifierConfig, model_cfg: ExperimentConfig) -> None:
    """One-line error unless the classifier was trained on the model's SDE and data shape."""
    theirs, ours = _sde_entries(classifier_cfg.sde), _sde_entries(model_cfg.sde)
    if theirs != ours:
        diff = ", ".join(f"{k}: {theirs[k]} vs {ours[k]}" for k in theirs if theirs[k] != ours[k])
        raise ValueError(
            f"the classifier was trained for another SDE than the score model ({diff}; "
            "classifier vs model): train it with the model's sde section"
        )
    shape_c, shape_m = data_shape(classifier_cfg.data), data_shape(model_cfg.data)
    if shape_c != shape_m:
        raise ValueError(
            f"the classifier takes data of shape {shape_c}, the score model makes {shape_m}: "
            "train it on the model's data set and data.image_size"
        )


@torch.no_grad()
def classify(
    classifier: NoiseConditionalClassifier, images01: Tensor, batch_size: int = 256
) -> Tensor:
    """Predicted classes of clean images in [0, 1] (evaluated at the smallest training time)."""
    device = next(classifier.parameters()).device
    preds = []
    for chunk in images01.split(batch_size):
        x = classifier.sde.scale_data(chunk.to(device))
        t = torch.full((x.shape[0],), classifier.sde.default_eps, device=device)
        preds.append(classifier(x, t).argmax(1).cpu())
    return torch.cat(preds)


def validation_accuracy(classifier: NoiseConditionalClassifier, cfg: ClassifierConfig) -> float:
    """Accuracy on the clean images of the data set's validation split (held out in training)."""
    from lightning_score.data import build_datamodule

    datamodule = build_datamodule(cfg.data, seed=cfg.seed)
    datamodule.setup()
    correct = total = 0
    for images, labels in torch.utils.data.DataLoader(datamodule.val_set, batch_size=256):
        correct += int((classify(classifier, images) == labels).sum())
        total += labels.numel()
    return correct / total


__all__ = [
    "ClassifierModule",
    "NoiseConditionalClassifier",
    "build_classifier",
    "check_classifier_fits",
    "classify",
    "load_classifier",
    "load_classifier_config",
    "train_classifier",
    "validate_classifier_config",
    "validation_accuracy",
]
