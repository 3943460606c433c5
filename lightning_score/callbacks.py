"""Training callbacks: periodic sample grids from the configured sampler (EMA weights)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torchvision.utils import make_grid, save_image

from lightning_score.config import SamplingConfig


def save_points_plot(points: torch.Tensor, path: Path, title: str) -> None:
    """Scatter plot for 2-D toy samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    pts = points.cpu().numpy()
    ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
    ax.set_title(title)
    ax.set_aspect("equal")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def upscale_for_viewing(images: torch.Tensor, min_size: int = 32) -> torch.Tensor:
    """Nearest-neighbour upscaling so that tiny images (8x8 digits) stay legible in a grid."""
    factor = -(-min_size // images.shape[-1])
    if factor <= 1:
        return images
    return torch.nn.functional.interpolate(images, scale_factor=factor, mode="nearest")


class SampleGridCallback(L.Callback):
    """Every ``every_n_steps`` (checked at validation, when EMA weights are swapped in) and at the
    end of training, sample ``num`` examples on rank zero and save a PNG grid (or a scatter plot
    for 2-D data) under ``out_dir``; image loggers receive the grid too."""

    def __init__(
        self, out_dir: Path, sampling: SamplingConfig, num: int, every_n_steps: int, seed: int = 0
    ):
        super().__init__()
        self.out_dir = Path(out_dir)
        self.sampling = sampling
        self.num = num
        self.every_n_steps = every_n_steps
        self.seed = seed
        self._last_step = -1

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if trainer.sanity_checking or step == self._last_step:
            return
        if step % self.every_n_steps == 0 or step >= (trainer.max_steps or 0):
            self._sample_and_save(trainer, pl_module, step)

    @torch.no_grad()
    def _sample_and_save(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        from lightning_score.sampling import sample

        self._last_step = step
        if not trainer.is_global_zero:
            return
        was_training = pl_module.training
        pl_module.eval()
        shape = (self.num, *pl_module.data_shape)
        gen = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        result = sample(
            pl_module.score_model,
            pl_module.sde,
            shape,
            self.sampling,
            generator=gen,
            device=pl_module.device,
        )
        pl_module.train(was_training)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"samples_step{step:07d}.png"
        if len(shape) == 2:
            save_points_plot(result.samples, path, f"step {step}, {result.nfe} NFE")
            return
        images = pl_module.sde.unscale_data(result.samples).clamp(0, 1).float().cpu()
        grid = make_grid(upscale_for_viewing(images), nrow=int(self.num**0.5), padding=1)
        save_image(grid, path)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="samples", images=[grid], step=step)
            elif hasattr(logger.experiment, "add_image"):
                logger.experiment.add_image("samples", grid, step)
