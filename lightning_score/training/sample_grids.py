"""Training callbacks: periodic sample grids from the configured sampler (EMA weights)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from lightning_score.config import SamplingConfig


class SampleGridCallback(L.Callback):
    """Every ``every_n_steps`` (checked at validation, when EMA weights are swapped in) and at the
    end of training, sample ``num`` examples on rank zero and save a PNG grid (or a scatter plot
    over the training points for 2-D data) under ``out_dir``; image loggers receive the grid too.
    ``sampling`` is the grids' own sampler (``experiment.grid_sampling``: few steps by default)."""

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
        from lightning_score.images import save_grid, to_data_space
        from lightning_score.sampling.generate import generate

        self._last_step = step
        if not trainer.is_global_zero:
            return
        was_training = pl_module.training
        pl_module.eval()
        result = generate(
            pl_module.score_model,
            pl_module.sde,
            pl_module.data_shape,
            self.sampling,
            num=self.num,
            batch_size=self.num,
            seed=self.seed,
            device=pl_module.device,
            progress=True,
            desc=f"sample grid ({self.sampling.sampler}, {self.sampling.steps} steps)",
        )
        pl_module.train(was_training)
        path = self.out_dir / f"samples_step{step:07d}.png"
        samples = to_data_space(pl_module.sde, result.samples)
        title = f"step {step}, {self.sampling.sampler}, {result.nfe:g} NFE"
        grid = save_grid(samples, path, title, self._data_points(trainer, samples))
        if grid is None:
            return
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="samples", images=[grid], step=step)
            elif hasattr(logger.experiment, "add_image"):
                logger.experiment.add_image("samples", grid, step)

    @staticmethod
    def _data_points(trainer: L.Trainer, samples: torch.Tensor) -> torch.Tensor | None:
        """As many training points as samples, for the overlay of a 2-D plot (None for images)."""
        datamodule = getattr(trainer, "datamodule", None)
        dataset = getattr(datamodule, "train_set", None)
        if samples.dim() != 2 or dataset is None:
            return None
        count = min(len(samples), len(dataset))
        return torch.stack([dataset[i][0] for i in range(count)])
