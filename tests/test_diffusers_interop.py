"""diffusers score-SDE UNet2DModel (NCSN++ skip blocks, Fourier embedding) as a VE score model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from diffusers import ScoreSdeVePipeline, ScoreSdeVeScheduler, UNet2DModel

from lightning_score.nets.diffusers_interop import load_diffusers_score_model
from lightning_score.sde import VESDE


def _ncsnpp_unet(**overrides) -> UNet2DModel:
    """A small UNet2DModel with the layout of google/ncsnpp-celebahq-256 (skip blocks, Fourier)."""
    config = {
        "sample_size": 16,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "time_embedding_type": "fourier",
        "norm_eps": 1e-6,
        "mid_block_scale_factor": math.sqrt(2.0),
        "norm_num_groups": None,
        "center_input_sample": True,
        "down_block_types": ("SkipDownBlock2D", "AttnSkipDownBlock2D"),
        "up_block_types": ("AttnSkipUpBlock2D", "SkipUpBlock2D"),
        **overrides,
    }
    torch.manual_seed(0)
    unet = UNet2DModel(**config).eval()
    with torch.no_grad():  # nonzero everywhere, so a wrong conditioning shows in the output
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return unet


SCHEDULER = {"sigma_min": 0.02, "sigma_max": 80.0, "num_train_timesteps": 500}


def _check_score(unet: UNet2DModel, source: Path) -> None:
    model, sde = load_diffusers_score_model(source)
    assert isinstance(sde, VESDE)
    assert (sde.sigma_min, sde.sigma_max, sde.N) == (0.02, 80.0, 500)
    x = torch.rand(2, 3, 16, 16)
    t = torch.tensor([0.05, 0.9])
    sigma = 0.02 * (80.0 / 0.02) ** t  # sigma(t) of the scheduler's VE SDE
    with torch.no_grad():
        expected = unet(x, sigma).sample  # the UNet divides by sigma itself: this is the score
        torch.testing.assert_close(model(x, t), expected, rtol=1e-5, atol=1e-6)
        # usable by the samplers: the drift and diffusion of the reverse SDE
        f, g = sde.reverse(model).sde(x, t)
    assert torch.isfinite(f).all() and torch.isfinite(g).all()


def test_model_repository_layout(tmp_path: Path) -> None:
    unet = _ncsnpp_unet()
    unet.save_pretrained(tmp_path)
    ScoreSdeVeScheduler(**SCHEDULER).save_pretrained(tmp_path)
    _check_score(unet, tmp_path)


def test_pipeline_layout(tmp_path: Path) -> None:
    unet = _ncsnpp_unet()
    ScoreSdeVePipeline(unet=unet, scheduler=ScoreSdeVeScheduler(**SCHEDULER)).save_pretrained(
        tmp_path
    )
    assert (tmp_path / "unet").is_dir() and (tmp_path / "scheduler").is_dir()
    _check_score(unet, tmp_path)


def test_without_scheduler_the_noise_range_comes_from_arguments(tmp_path: Path) -> None:
    _ncsnpp_unet().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="pass sigma_min and sigma_max"):
        load_diffusers_score_model(tmp_path)
    _, sde = load_diffusers_score_model(tmp_path, sigma_min=0.01, sigma_max=348.0, num_scales=2000)
    assert (sde.sigma_min, sde.sigma_max, sde.N) == (0.01, 348.0, 2000)


def test_non_ve_unet_and_missing_directory_are_refused(tmp_path: Path) -> None:
    _ncsnpp_unet(time_embedding_type="positional").save_pretrained(tmp_path / "ddpm")
    with pytest.raises(ValueError, match="time_embedding_type='positional'"):
        load_diffusers_score_model(tmp_path / "ddpm", sigma_min=0.01, sigma_max=50.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_diffusers_score_model(tmp_path / "empty")
