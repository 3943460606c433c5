"""Small real training runs through the same path as `python train.py`."""

import csv
from pathlib import Path

import pytest
import torch

from lightning_score.data.toy2d import gaussian_mixture
from lightning_score.evaluation.sliced import sliced_wasserstein
from lightning_score.experiment import load_config
from lightning_score.sampling import sample
from lightning_score.training.checkpoint import load_score_model
from lightning_score.training.run import train

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_path_trains_and_leaves_a_run_directory(tmp_path):
    cfg = load_config(
        ROOT / "configs" / "quickstart.yaml",
        [
            f"out_dir={tmp_path}",
            "trainer.max_steps=160",
            "trainer.val_check_interval=40",
            "ema.decay=0.9",
            "checkpoint.every_n_steps=80",
            "sample_grid.every_n_steps=160",
            "sample_grid.num=16",
            "sampling.steps=50",
        ],
    )
    run_dir = train(cfg)
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "checkpoints" / "step0000080.ckpt").is_file()
    assert (run_dir / "samples" / "samples_step0000160.png").is_file()
    with open(run_dir / "logs" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    val = [float(r["val/loss"]) for r in rows if r["val/loss"]]
    assert len(val) == 4 and val[-1] < 0.7 * val[0], val
    binned = [k for k in rows[0] if k.startswith("val_loss_t/")]
    assert len(binned) == cfg.loss.t_bins
    model, loaded = load_score_model(run_dir / "checkpoints" / "last.ckpt")
    assert loaded.name == cfg.name and not model.training


def test_toy2d_samples_match_the_data(tmp_path):
    cfg = load_config(
        ROOT / "configs" / "toy2d.yaml",
        [f"out_dir={tmp_path}", "trainer.max_steps=1500", "sample_grid.every_n_steps=100000"],
    )
    run_dir = train(cfg)
    model, cfg = load_score_model(run_dir / "checkpoints" / "last.ckpt")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        result = sample(model, model.sde, (2000, 2), cfg.sampling, generator=gen)
    data = gaussian_mixture(2000, torch.Generator().manual_seed(2))
    prior = torch.randn(2000, 2, generator=torch.Generator().manual_seed(3))
    sw_model, sw_prior = sliced_wasserstein(result.samples, data), sliced_wasserstein(prior, data)
    # independent draws of 2000 points from the data itself are ~0.03 apart
    assert sw_model < 0.2 * sw_prior, (sw_model, sw_prior)
    # the 8 modes are all populated: each holds 12.5% +- a few percent of the samples
    from lightning_score.data.toy2d import ring_centres

    nearest = torch.cdist(result.samples, ring_centres()).argmin(1)
    share = torch.bincount(nearest, minlength=8).float() / 2000
    assert share.min() > 0.07 and share.max() < 0.18, share


@pytest.mark.parametrize(
    "overrides",
    [["model.name=ncsnpp_tiny", "sde.name=vesde"], ["model.name=ddpmpp_tiny", "sde.name=subvpsde"]],
    ids=["ncsnpp_tiny-ve", "ddpmpp_tiny-subvp"],
)
def test_tiny_paper_networks_train_in_the_quickstart_path(tmp_path, overrides):
    """NCSN++ / DDPM++ are a config switch away from the quickstart."""
    cfg = load_config(
        ROOT / "configs" / "quickstart.yaml",
        [
            *overrides,
            f"out_dir={tmp_path}",
            "trainer.max_steps=4",
            "trainer.val_check_interval=4",
            "trainer.limit_val_batches=1",
            "sample_grid.num=4",
            "sampling.steps=3",
        ],
    )
    run_dir = train(cfg)
    model, _ = load_score_model(run_dir / "checkpoints" / "last.ckpt")
    x = torch.rand(2, 1, 8, 8)
    assert torch.isfinite(model(x, torch.full((2,), 0.5))).all()
    assert (run_dir / "samples" / "samples_step0000004.png").is_file()


def test_evaluation_during_training_logs_fid_with_the_sample_count(tmp_path, monkeypatch):
    """The config's evaluation section wires FID/KID (offline Inception weights) into training."""
    monkeypatch.setenv("LSCORE_CACHE_DIR", str(tmp_path / "cache"))
    cfg = load_config(
        ROOT / "configs" / "quickstart.yaml",
        [
            f"out_dir={tmp_path}",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "trainer.limit_val_batches=1",
            "sample_grid.num=4",
            "sampling.steps=3",
            "evaluation.every_n_steps=2",
            "evaluation.num_samples=6",
            "evaluation.reference_num=10",
            "evaluation.batch_size=6",
        ],
    )
    run_dir = train(cfg)
    with open(run_dir / "logs" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    fid = [float(r["fid_6"]) for r in rows if r.get("fid_6")]
    assert len(fid) == 1 and fid[0] > 0
    assert any(r.get("kid_6") for r in rows)
