"""Two-process CPU DDP run of EvaluationCallback (launched by tests/test_eval_ddp.py).

``python tests/ddp_eval_script.py OUT_DIR STATS.npz``: trains the quickstart model (tiny UNet)
for 2 steps with ``strategy="ddp"`` on 2 CPU processes; at step 2 the callback samples
NUM_SAMPLES images split over the ranks, saves each rank's samples and logs the synced metrics;
``ema_check.json`` records whether it sampled with the EMA weights.
The feature network is a tiny fixed random projection instead of Inception (Inception costs ~0.2 s
per image here and its 2048-d FID several seconds per evaluation); the sync logic is identical.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector

from lightning_score.config import ExperimentConfig
from lightning_score.evaluation.callback import EvaluationCallback

ROOT = Path(__file__).resolve().parents[1]
NUM_SAMPLES = 11  # odd: rank 0 draws 6, rank 1 draws 5
METRICS = ("fid", "kid")


class TinyExtractor(nn.Module):
    """8-d features: a fixed random projection of 4x4-pooled RGB images, through tanh."""

    name = "tiny-test-extractor"
    num_features = 8
    has_logits = False

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(3 * 4 * 4, 8, generator=g) / 4)

    def features(self, images: Tensor) -> dict[str, Tensor]:
        from lightning_score.evaluation import to_uint8

        x = to_uint8(images).float().to(self.proj.device) / 255
        return {"pool": torch.tanh(F.adaptive_avg_pool2d(x, 4).flatten(1) @ self.proj)}


class ProbedEvaluation(EvaluationCallback):
    """Records the weights it samples with, and the raw weights EMA swapped out meanwhile."""

    def evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> tuple[dict[str, float], float]:
        ema = next(cb for cb in trainer.callbacks if isinstance(cb, EMAWeightAveraging))
        self.used = parameters_to_vector(pl_module.score_model.parameters()).clone()
        self.swapped_out = parameters_to_vector(ema._average_model.module.score_model.parameters())
        return super().evaluate(trainer, pl_module)


def quickstart_config(out_dir: Path) -> ExperimentConfig:
    from lightning_score.experiment import load_config

    return load_config(
        ROOT / "configs" / "quickstart.yaml",
        [
            f"out_dir={out_dir}",
            "model.kwargs.channels=[8,16]",
            "sampling.steps=5",
            "data.batch_size=16",
        ],
    )


def main(out_dir: Path, stats: Path) -> None:
    from lightning_score.data import build_datamodule
    from lightning_score.training.module import ScoreModule

    torch.set_num_threads(1)
    cfg = quickstart_config(out_dir)
    L.seed_everything(0, verbose=False)
    evaluation = ProbedEvaluation(
        every_n_steps=2,
        num_samples=NUM_SAMPLES,
        reference=stats,
        sampling=cfg.sampling,
        out_dir=out_dir,
        metrics=METRICS,
        batch_size=4,
        extractor=TinyExtractor(),
        save_samples=True,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=2,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[evaluation, EMAWeightAveraging(decay=cfg.ema.decay)],
    )
    module = ScoreModule.from_config(cfg)
    trainer.fit(module, datamodule=build_datamodule(cfg.data, seed=cfg.seed))
    # Evaluation ran at the last step; at train end EMA copies its average into the module.
    final_ema = parameters_to_vector(module.score_model.parameters())
    if trainer.is_global_zero:
        check = {
            "sampled_with_ema": bool(torch.equal(evaluation.used, final_ema)),
            "ema_differs_from_raw": not torch.equal(evaluation.used, evaluation.swapped_out),
        }
        (out_dir / "ema_check.json").write_text(json.dumps(check))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
