"""diffusers UNet2DModels as score models: score-SDE VE models (NCSN++ skip blocks, Fourier
embedding, ScoreSdeVeScheduler) and DDPM models (positional embedding, DDPMScheduler) as VP."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    ScoreSdeVePipeline,
    ScoreSdeVeScheduler,
    UNet2DModel,
)

from lightning_score.nets.diffusers_interop import load_diffusers_score_model
from lightning_score.sde import VESDE, VPSDE


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


def test_unet_and_scheduler_must_agree_and_missing_directory_is_refused(tmp_path: Path) -> None:
    _ncsnpp_unet(time_embedding_type="positional").save_pretrained(tmp_path / "ddpm")
    ScoreSdeVeScheduler(**SCHEDULER).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(ValueError, match="time_embedding_type='positional'"):
        load_diffusers_score_model(tmp_path / "ddpm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_diffusers_score_model(tmp_path / "empty")


# -- DDPM models (google/ddpm-cifar10-32's layout) as VP score models --------------------------
def _ddpm_unet(zero_output: bool = False) -> UNet2DModel:
    """google/ddpm-cifar10-32's UNet2DModel config at a tiny width, 1x8x8 (digits)."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        norm_eps=1e-6,
        norm_num_groups=8,
        attention_head_dim=None,
    ).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
        if zero_output:  # epsilon == 0 everywhere: the score is 0
            unet.conv_out.weight.zero_()
            unet.conv_out.bias.zero_()
    return unet


DDPM = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}


def _save_ddpm(path: Path, unet: UNet2DModel, layout: str, **scheduler) -> Path:
    sched = DDPMScheduler(**{**DDPM, **scheduler})
    if layout == "pipeline":
        DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(path)
    else:
        unet.save_pretrained(path)
        sched.save_pretrained(path)
    return path


@pytest.mark.parametrize("layout", ["pipeline", "model"])
def test_ddpm_unet_is_a_vp_model_predicting_epsilon(tmp_path: Path, layout: str) -> None:
    unet = _ddpm_unet()
    model, sde = load_diffusers_score_model(_save_ddpm(tmp_path, unet, layout))
    assert isinstance(sde, VPSDE) and model.param.name == "vp"
    # beta_min / beta_max = N * beta_start / end (Song et al.'s continuous DDPM)
    assert (sde.beta_0, sde.beta_1, sde.N) == pytest.approx((0.1, 20.0, 1000))
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([1e-3, 0.4, 1.0])
    b = 0.1 * t.double() + 0.5 * 19.9 * t.double() ** 2  # int_0^t beta
    std = torch.sqrt(1 - torch.exp(-b)).float()
    with torch.no_grad():  # score = -eps(x, (N - 1) t) / std(t)
        eps = unet(x, 999 * t).sample
        torch.testing.assert_close(model(x, t), -eps / std[:, None, None, None])


def test_ddpm_alphas_cumprod_approach_the_vp_marginal_at_the_grid_times() -> None:
    """DDPM's prod(1 - beta_j) is the VP SDE's alpha(t)^2 at t_i = i / (N - 1) up to O(1 / N)."""
    gaps = []
    for n in (1000, 4000):
        sched = DDPMScheduler(num_train_timesteps=n, beta_start=0.1 / n, beta_end=20.0 / n)
        sde = VPSDE(beta_min=0.1, beta_max=20.0, N=n)
        t = torch.arange(n, dtype=torch.float64) / (n - 1)
        gaps.append(float((sched.alphas_cumprod.double() - sde.alpha(t) ** 2).abs().max()))
    assert gaps[0] < 3e-3
    assert gaps[1] < gaps[0] / 3  # first order in 1 / N


def test_likelihood_of_a_zero_epsilon_ddpm_model_has_its_closed_form(tmp_path: Path) -> None:
    """With eps == 0 the probability flow is dx/dt = -beta(t) x / 2: x(T) = x e^{-dB/2} and
    log p(x) = log N(x(T); 0, I) - D dB / 2 with dB = B(T) - B(eps), B = int beta, so the
    diffusers -> VP mapping (beta_min, beta_max) shows in the number."""
    from lightning_score.evaluation.likelihood import log_likelihood

    model, sde = load_diffusers_score_model(
        _save_ddpm(tmp_path, _ddpm_unet(zero_output=True), "pipeline")
    )
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = 1e-3
    # the Jacobian is -beta / 2 times the identity: a Rademacher probe gives its trace exactly
    result = log_likelihood(model, sde, x, trace="rademacher", eps=eps)
    d_b = (0.1 + 19.9 / 2) - (0.1 * eps + 19.9 / 2 * eps**2)
    z = x * math.exp(-d_b / 2)
    dim = x[0].numel()
    expected = -0.5 * dim * math.log(2 * math.pi) - 0.5 * z.flatten(1).pow(2).sum(1) - dim * d_b / 2
    torch.testing.assert_close(result.logp, expected, rtol=1e-4, atol=1e-3)


def test_ddpm_model_samples_with_pc_and_ode_and_has_a_likelihood(tmp_path: Path) -> None:
    from lightning_score.config import SamplingConfig
    from lightning_score.evaluation.likelihood import bits_per_dim
    from lightning_score.sampling import sample

    model, sde = load_diffusers_score_model(_save_ddpm(tmp_path, _ddpm_unet(), "model"))
    gen = torch.Generator().manual_seed(0)
    for cfg, nfe in ((SamplingConfig(sampler="pc", steps=4), 4), (SamplingConfig(sampler="ode", rtol=1e-2, atol=1e-2), None)):  # fmt: skip
        result = sample(model, sde, (2, 1, 8, 8), cfg, generator=gen)
        assert result.samples.shape == (2, 1, 8, 8) and torch.isfinite(result.samples).all()
        assert result.nfe == nfe if nfe is not None else result.nfe > 2
    bpd, nfe = bits_per_dim(model, sde, torch.rand(2, 1, 8, 8), generator=gen, rtol=1e-2, atol=1e-2)
    assert torch.isfinite(bpd).all() and nfe > 2


def test_ddim_scheduler_maps_too_and_inexact_schedules_are_refused(tmp_path: Path) -> None:
    unet = _ddpm_unet()
    unet.save_pretrained(tmp_path / "ddim")
    DDIMScheduler(**DDPM).save_pretrained(tmp_path / "ddim")
    _, sde = load_diffusers_score_model(tmp_path / "ddim")
    assert (sde.beta_0, sde.beta_1) == pytest.approx((0.1, 20.0))
    for name, kwargs, why in (
        ("cos", {"beta_schedule": "squaredcos_cap_v2"}, "beta_schedule='squaredcos_cap_v2'"),
        ("v", {"prediction_type": "v_prediction"}, "prediction_type='v_prediction'"),
    ):
        _save_ddpm(tmp_path / name, unet, "model", **kwargs)
        with pytest.raises(ValueError, match=why):
            load_diffusers_score_model(tmp_path / name)
    unet.save_pretrained(tmp_path / "bare")  # no scheduler: the betas must be given
    with pytest.raises(ValueError, match="pass beta_min and beta_max"):
        load_diffusers_score_model(tmp_path / "bare")
    _, sde = load_diffusers_score_model(tmp_path / "bare", beta_min=0.1, beta_max=20.0)
    assert sde.N == 1000


def test_converted_ddpm_model_runs_through_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_score.cli import main
    from lightning_score.training.checkpoint import load_score_model

    source = _save_ddpm(tmp_path / "ddpm", _ddpm_unet(), "pipeline")
    assert main(["convert", str(source), "--out", str(tmp_path / "x")]) == 2
    assert "pass --data NAME" in capsys.readouterr().err
    assert main(["convert", str(source), "--data", "digits", "--out", str(tmp_path / "ours")]) == 0
    ours, cfg = load_score_model(tmp_path / "ours")
    theirs, _ = load_diffusers_score_model(source)
    assert (cfg.model.name, cfg.sde.name, cfg.model.parameterization) == (
        "diffusers",
        "vpsde",
        "vp",
    )
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.1, 0.9])
    with torch.no_grad():
        assert torch.equal(ours(x, t), theirs(x, t))
    common = ["--num", "4", "--batch-size", "4"]
    ablate = [
        "ablate",
        str(tmp_path / "ours"),
        "--samplers",
        "pc:2,ode",
        "--out",
        str(tmp_path / "ab"),
    ]
    assert main([*ablate, *common, "--no-progress"]) == 0
    assert (tmp_path / "ab" / "ablation.csv").is_file()
    out = tmp_path / "bpd.json"
    likelihood = ["likelihood", str(tmp_path / "ours"), "--repeats", "1", "--out", str(out)]
    assert main([*likelihood, *common, "--rtol", "1e-2", "--atol", "1e-2"]) == 0
    assert math.isfinite(json.loads(out.read_text())["bpd"])
