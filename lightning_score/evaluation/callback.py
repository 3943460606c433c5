"""FID / IS / KID during training, correct under DDP and computed with the EMA weights.

Every ``every_n_steps`` training steps (checked when validation ends), the ``num_samples``
images are split across all ranks: rank r draws its share in batches seeded with
``batch_seed(seed, r, b)``, so ranks never share noise and every evaluation of a run uses the
same noise (metrics are comparable over training). Each rank updates the torchmetrics states with
its own samples; ``compute`` syncs them, so the logged ``fid_{N}`` equals a single-process run on
the union of the samples. Reference statistics count on rank 0 only.

EMA: Lightning's ``EMAWeightAveraging`` swaps the averaged weights in at validation start and back
at validation end, calling callbacks in list order, so this callback must come *before* it in
``Trainer(callbacks=...)``; :meth:`setup` checks that.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor

from lightning_score.config import SamplingConfig
from lightning_score.evaluation import FeatureExtractor, ImageMetrics, ReferenceStats
from lightning_score.images import to_uint8


class EvaluationCallback(L.Callback):
    """Sample ``num_samples`` images over all ranks every ``every_n_steps`` steps; log the metrics.

    ``reference``: a stats file from ``lscore stats`` (or loaded :class:`ReferenceStats`);
    ``reference_set`` says what they describe (default: the file's name).
    ``extractor``: defaults to the standard Inception network (``load_inception``).
    Writes ``eval_step{step}.json`` and ``eval_step{step}.png`` under ``out_dir`` (rank 0), and
    with ``save_samples`` each rank's uint8 samples as ``eval_step{step}_rank{r}.npz``.
    """

    def __init__(
        self,
        every_n_steps: int,
        num_samples: int,
        reference: str | Path | ReferenceStats,
        sampling: SamplingConfig,
        out_dir: str | Path,
        metrics: Sequence[str] = ("fid",),
        batch_size: int = 250,
        seed: int = 0,
        extractor: FeatureExtractor | None = None,
        grid: int = 64,
        save_samples: bool = False,
        kid_subset_size: int = 1000,
        reference_set: str | None = None,
    ) -> None:
        super().__init__()
        if every_n_steps <= 0 or num_samples < 2:
            raise ValueError(
                f"evaluation needs every_n_steps > 0 and num_samples >= 2, "
                f"got {every_n_steps} and {num_samples}"
            )
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.reference = reference
        self.sampling = sampling
        self.out_dir = Path(out_dir)
        self.metric_names = tuple(metrics)
        self.batch_size = batch_size
        self.seed = seed
        self.extractor = extractor
        self.grid = grid
        self.save_samples = save_samples
        self.kid_subset_size = kid_subset_size
        #: what the reference statistics describe, recorded beside the metrics (model cards)
        self.reference_set = reference_set or (
            None if isinstance(reference, ReferenceStats) else f"statistics file {reference}"
        )
        self.metrics: ImageMetrics | None = None
        self._last_evaluated = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        order = trainer.callbacks
        ema = [i for i, cb in enumerate(order) if isinstance(cb, WeightAveraging)]
        if ema and ema[0] < order.index(self):
            raise ValueError(
                "EvaluationCallback must come before EMAWeightAveraging in the callbacks list: "
                "EMA swaps its weights back at validation end, before later callbacks run"
            )
        if getattr(pl_module, "is_image", True) is False:
            raise ValueError("FID / IS / KID need image data; this model is trained on points")
        if self.extractor is None:
            from lightning_score.evaluation import load_inception

            self.extractor = load_inception(need_logits="is" in self.metric_names)
        stats = self.reference
        if not isinstance(stats, ReferenceStats):
            stats = ReferenceStats.load(stats, expected_dim=self.extractor.num_features)
        # Moved to the module's device at each evaluation: in setup() it may still be on the CPU.
        self.metrics = ImageMetrics(
            self.metric_names, self.extractor, kid_subset_size=self.kid_subset_size
        )
        self.metrics.set_reference(stats, rank=trainer.global_rank)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if trainer.sanity_checking or step // self.every_n_steps <= self._last_evaluated:
            return
        self._last_evaluated = step // self.every_n_steps
        values, nfe = self.evaluate(trainer, pl_module)
        for name, value in values.items():
            pl_module.log(name, value, rank_zero_only=True)
        if trainer.is_global_zero:
            record = {
                "step": step,
                "metrics": values,
                "nfe": nfe,
                "num_samples": self.num_samples,
                "reference_set": self.reference_set,
            }
            (self.out_dir / f"eval_step{step:07d}.json").write_text(json.dumps(record, indent=2))

    @torch.no_grad()
    def evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> tuple[dict[str, float], float]:
        """This rank's share of samples into the metric states, then the synced metric values."""
        from lightning_score.progress import progress_bar
        from lightning_score.sampling.generate import rank_share, stream_samples

        assert self.metrics is not None, "setup() runs first"
        rank, world = trainer.global_rank, trainer.world_size
        was_training = pl_module.training
        pl_module.eval()
        sde = pl_module.sde
        kept: list[Tensor] = []
        nfes = []
        self.metrics.to(pl_module.device)
        self.metrics.reset()
        share = rank_share(self.num_samples, rank, world)
        features = progress_bar(
            total=share,
            desc=f"Inception features ({', '.join(self.metric_names)})",
            unit="image",
            enabled=rank == 0,
        )
        with features:
            for batch in stream_samples(
                pl_module.score_model,
                sde,
                pl_module.data_shape,
                self.sampling,
                num=share,
                batch_size=self.batch_size,
                seed=self.seed,
                rank=rank,
                device=pl_module.device,
                progress=rank == 0,
                desc=f"evaluation samples ({self.sampling.sampler}, {world} rank(s))",
            ):
                images = to_uint8(sde.unscale_data(batch.samples).clamp(0, 1))
                self.metrics.update_counted(images, features)
                nfes.append(batch.nfe)
                if self.save_samples or (rank == 0 and sum(len(k) for k in kept) < self.grid):
                    kept.append(images.cpu())
        pl_module.train(was_training)
        values = self.metrics.compute()  # collective: every rank gets here
        nfe = float(np.mean(nfes)) if nfes else 0.0
        caption = f"step {trainer.global_step}, {self.sampling.sampler}, {nfe:g} NFE"
        self._write_outputs(trainer.global_step, rank, kept, caption)
        return values, nfe

    def _write_outputs(self, step: int, rank: int, kept: list[Tensor], caption: str) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        images = torch.cat(kept) if kept else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
        if self.save_samples:
            nhwc = images.permute(0, 2, 3, 1).numpy()
            np.savez(self.out_dir / f"eval_step{step:07d}_rank{rank}.npz", nhwc)
        if rank == 0 and len(images):
            from lightning_score.images import save_grid

            save_grid(images[: self.grid], self.out_dir / f"eval_step{step:07d}.png", caption)
