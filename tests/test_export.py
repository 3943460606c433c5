"""`lscore export`: safetensors round trips bit for bit and loads in every command; diffusers
folders load with diffusers' own from_pretrained and compute what our models compute; models
that do not map are refused with the reason."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lightning_score.cli import main
from lightning_score.config import to_dict
from lightning_score.data import data_shape
from lightning_score.experiment import build_score_model, load_config
from lightning_score.training.checkpoint import load_checkpoint, load_score_model, model_state

TINY_256 = [  # the 256 px NCSN++ layout (skip blocks) at a tiny width; attention at 128 channels
    "model.name=ncsnpp_256",
    "model.kwargs.nf=32",
    "model.kwargs.ch_mult=[1,2,4]",
    "model.kwargs.num_res_blocks=1",
    "model.kwargs.attn_resolutions=[4]",
    "model.kwargs.dropout=0.0",
    "data.name=cifar10",
    "data.image_size=16",
]


def write_checkpoint(path: Path, overrides: list[str], step: int = 7) -> Path:
    """A checkpoint in the training layout (EMA and raw weights differ) for ``overrides``."""
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    model = build_score_model(cfg)
    states = []
    for _ in range(2):  # nonzero everywhere, so a wrong layer mapping shows in the output
        states.append({f"score_model.{k}": v + 0.02 * torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()})  # fmt: skip
    ckpt = {
        "state_dict": states[0],
        "current_model_state": states[1],
        "hyper_parameters": {"config": to_dict(cfg)},
        "global_step": step,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def export(ckpt: Path, fmt: str, out: Path, *extra: str) -> int:
    return main(["export", str(ckpt), "--format", fmt, "--out", str(out), *extra])


def noisy_inputs(model, cfg, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy data x_t at a spread of times, as the samplers see them."""
    sde = model.sde
    gen = torch.Generator().manual_seed(1)
    t = torch.linspace(0.05, 1.0, n) * sde.T
    shape = (n, *data_shape(cfg.data))
    x0 = sde.scale_data(torch.rand(shape, generator=gen))
    mean, std = sde.marginal_prob(x0, t)
    return mean + std[:, None, None, None] * torch.randn(shape, generator=gen), t


# -- safetensors -----------------------------------------------------------------------------
def test_safetensors_round_trips_bit_for_bit(checkpoint: Path, tmp_path: Path) -> None:
    assert export(checkpoint, "safetensors", tmp_path / "st") == 0
    file = tmp_path / "st" / "model.safetensors"
    ours, cfg = load_score_model(checkpoint)
    for source in (tmp_path / "st", file):  # the folder or the file
        back, back_cfg = load_score_model(source)
        a, b = ours.state_dict(), back.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
        assert to_dict(back_cfg) == to_dict(cfg)
    with safe_open(file, framework="pt") as fh:
        meta = fh.metadata()
    assert meta["weights"] == "ema" and meta["step"] == "2"
    assert json.loads(meta["config"]) == json.loads((tmp_path / "st" / "config.json").read_text())
    # the file holds the EMA weights, not the raw ones
    raw = model_state(load_checkpoint(checkpoint), ema=False)
    assert not all(torch.equal(raw[k], ours.state_dict()[k]) for k in raw)


def test_raw_export_holds_raw_weights_and_asks_for_no_ema(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export(checkpoint, "safetensors", tmp_path / "raw", "--raw") == 0
    raw = model_state(load_checkpoint(checkpoint), ema=False)
    back, _ = load_score_model(tmp_path / "raw", ema=False)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in raw.items())
    args = ["sample", str(tmp_path / "raw"), "--num", "2", "--out", str(tmp_path / "s")]
    assert main([*args, "--steps", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds the RAW weights only: pass --no-ema" in err and len(err.splitlines()) == 1


def test_commands_take_the_export_and_sample_exactly_as_from_the_checkpoint(
    checkpoint: Path, tmp_path: Path
) -> None:
    assert export(checkpoint, "safetensors", tmp_path / "st") == 0
    arrays = []
    for i, source in enumerate((checkpoint, tmp_path / "st", tmp_path / "st/model.safetensors")):
        out = tmp_path / f"s{i}"
        args = ["sample", str(source), "--num", "4", "--batch-size", "4", "--steps", "3"]
        assert main([*args, "--out", str(out), "--no-progress"]) == 0
        arrays.append(np.load(out / "samples.npz")["arr_0"])
    assert np.array_equal(arrays[0], arrays[1]) and np.array_equal(arrays[0], arrays[2])
    out = tmp_path / "bpd.json"
    args = ["likelihood", str(tmp_path / "st"), "--num", "4", "--repeats", "1", "--batch-size", "4"]
    assert main([*args, "--rtol", "1e-3", "--atol", "1e-3", "--out", str(out)]) == 0
    assert math.isfinite(json.loads(out.read_text())["bpd"])
    args = ["ablate", str(tmp_path / "st"), "--samplers", "euler:2", "--num", "4", "--batch-size"]
    assert main([*args, "4", "--out", str(tmp_path / "ab"), "--no-progress"]) == 0


def test_model_card_names_data_sde_network_steps_and_run_metrics(tmp_path: Path) -> None:
    ckpt = write_checkpoint(
        tmp_path / "run/checkpoints/last.ckpt", ["sde.name=vesde", "sde.sigma_max=30"], step=1500
    )
    (tmp_path / "run/eval").mkdir()
    record = {"step": 1500, "metrics": {"fid_200": 12.5, "kid_200": 0.01}, "num_samples": 200}
    (tmp_path / "run/eval/eval_step0001500.json").write_text(json.dumps(record))
    (ckpt.parent / "eval").mkdir()
    bpd = {"split": "test", "bpd": 3.25, "bpd_stderr": 0.01, "points": 100}
    (ckpt.parent / "eval/last_bpd_test.json").write_text(json.dumps(bpd))
    assert export(ckpt, "safetensors", tmp_path / "st") == 0
    card = (tmp_path / "st/README.md").read_text()
    for text in (
        "`digits`, 1x16x16, seen by the model in [0, 1]",
        "`vesde` (sigma_min 0.01, sigma_max 30, N 1000)",
        "`ve`: Song's VE row",
        "`unet`",
        "| training steps | 1500 |",
        "EMA (decay 0.999)",
        "| eval_step0001500.json | fid_200 | 12.5 | step 1500, num_samples 200 |",
        "| last_bpd_test.json | bpd | 3.25 | split test, points 100 |",
    ):
        assert text in card, text


# -- diffusers -------------------------------------------------------------------------------
def test_vp_unet_exports_to_a_ddpm_pipeline(checkpoint: Path, tmp_path: Path) -> None:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    assert export(checkpoint, "diffusers", tmp_path / "df") == 0
    model, cfg = load_score_model(checkpoint)
    unet = UNet2DModel.from_pretrained(tmp_path / "df", subfolder="unet")
    x, t = noisy_inputs(model, cfg)
    with torch.no_grad():  # the UNet at the DDPM step (N - 1) t predicts our noise F
        torch.testing.assert_close(
            unet(x, 999 * t).sample, model.network(x, t), rtol=1e-5, atol=1e-5
        )
    sched = DDPMScheduler.from_pretrained(tmp_path / "df", subfolder="scheduler")
    n = cfg.sde.N
    betas = torch.linspace(cfg.sde.beta_min / n, cfg.sde.beta_max / n, n)
    torch.testing.assert_close(sched.betas, betas)
    pipe = DDPMPipeline.from_pretrained(tmp_path / "df")  # the whole pipeline loads and runs
    image = pipe(batch_size=1, num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 8, 8, 1) and np.isfinite(image).all()


def test_ve_ncsnpp_256_layout_exports_exactly(tmp_path: Path) -> None:
    from diffusers import ScoreSdeVePipeline, ScoreSdeVeScheduler, UNet2DModel

    ckpt = write_checkpoint(tmp_path / "ve.ckpt", [*TINY_256, "sde.name=vesde", "sde.sigma_max=90"])
    assert export(ckpt, "diffusers", tmp_path / "df") == 0
    model, cfg = load_score_model(ckpt)
    unet = UNet2DModel.from_pretrained(tmp_path / "df", subfolder="unet")
    assert unet.config.down_block_types == [
        "SkipDownBlock2D",
        "SkipDownBlock2D",
        "AttnSkipDownBlock2D",
    ]
    assert sum(p.numel() for p in unet.parameters()) == sum(p.numel() for p in model.parameters())
    x, t = noisy_inputs(model, cfg)
    sigma = 0.01 * (90 / 0.01) ** t
    with torch.no_grad():  # UNet2DModel at sigma returns the score: sigma times it is our F
        score = unet(x, sigma).sample
        ours = model(x, t)
        assert (score - ours).abs().max() <= 1e-5 * ours.abs().max()
        f = score * sigma[:, None, None, None]
        torch.testing.assert_close(f, model.network(x, t), rtol=1e-5, atol=1e-5)
    sched = ScoreSdeVeScheduler.from_pretrained(tmp_path / "df", subfolder="scheduler")
    assert (sched.config.sigma_min, sched.config.sigma_max) == (0.01, 90.0)
    assert sched.config.num_train_timesteps == 1000
    assert isinstance(ScoreSdeVePipeline.from_pretrained(tmp_path / "df").unet, UNet2DModel)


def test_vp_ncsnpp_256_layout_exports_with_the_official_positional_embedding(
    tmp_path: Path,
) -> None:
    from diffusers import UNet2DModel

    ckpt = write_checkpoint(tmp_path / "vp.ckpt", [*TINY_256, "sde.name=vpsde"])
    assert export(ckpt, "diffusers", tmp_path / "df") == 0
    model, cfg = load_score_model(ckpt)
    unet = UNet2DModel.from_pretrained(tmp_path / "df", subfolder="unet")
    x, t = noisy_inputs(model, cfg)
    with torch.no_grad():
        torch.testing.assert_close(
            unet(x, 999 * t).sample, model.network(x, t), rtol=1e-5, atol=1e-5
        )


def test_edm_unet_exports_with_the_edm_scheduler_preconditioning(tmp_path: Path) -> None:
    from diffusers import EDMEulerScheduler, UNet2DModel

    ckpt = write_checkpoint(
        tmp_path / "edm.ckpt",
        ["sde.name=edm", "model.kwargs.channels=[8,16]", "model.sigma_data=0.4"],
    )
    assert export(ckpt, "diffusers", tmp_path / "df") == 0
    model, cfg = load_score_model(ckpt)
    unet = UNet2DModel.from_pretrained(tmp_path / "df", subfolder="unet")
    sched = EDMEulerScheduler.from_pretrained(tmp_path / "df", subfolder="scheduler")
    assert sched.config.sigma_data == 0.4
    x, t = noisy_inputs(model, cfg)
    sigma = t[:, None, None, None]  # EDM's sigma(t) = t
    with torch.no_grad():
        out = unet(sched.precondition_inputs(x, sigma), sched.precondition_noise(t)).sample
        denoised = sched.precondition_outputs(x, out, sigma)
        torch.testing.assert_close(denoised, model.denoise(x, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (
            ["model.name=ncsnpp_tiny", "data.name=cifar10", "sde.name=vesde"],
            "progressive_input=residual",
        ),
        (["model.name=ddpmpp_tiny", "data.name=cifar10", "sde.name=vpsde"], "DDPM++"),
        (
            [*TINY_256, "model.kwargs.ch_mult=[1,2]", "model.kwargs.attn_resolutions=[8]"],
            "attention at 64 channels",
        ),
        ([*TINY_256, "data.name=digits"], "1 image channels"),
        (["sde.name=subvpsde"], "sub-VP SDE"),
        (
            ["sde.name=vesde", "model.parameterization=edm"],
            "no diffusers scheduler runs the 'edm' row",
        ),
        (["data.name=toy2d", "model.name=mlp"], "network 'mlp'"),
    ],
)
def test_models_that_do_not_map_are_refused_with_the_reason(
    overrides: list[str], reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = write_checkpoint(tmp_path / "m.ckpt", overrides)
    assert export(ckpt, "diffusers", tmp_path / "df") == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "df").exists()


def test_the_full_256px_ncsnpp_is_google_ncsnpp_celebahq_256s_unet() -> None:
    """The paper's 256 px NCSN++ (65,574,549 parameters) maps weight for weight onto the
    UNet2DModel layout of diffusers' google/ncsnpp-celebahq-256."""
    from lightning_score.nets.diffusers_layout import to_diffusers_unet
    from lightning_score.nets.ncsnpp import build_ncsnpp
    from lightning_score.parameterization import VEParameterization
    from lightning_score.sde import VESDE

    net = build_ncsnpp("ncsnpp_256", (3, 256, 256), VEParameterization(VESDE(0.01, 348.0)))
    unet = to_diffusers_unet(net, (3, 256, 256))
    assert sum(p.numel() for p in unet.parameters()) == 65_574_549
    skip = "SkipDownBlock2D"
    assert list(unet.config.down_block_types) == [skip] * 4 + ["AttnSkipDownBlock2D"] + [skip] * 2
    assert list(unet.config.block_out_channels) == [128, 128, 256, 256, 256, 256, 256]
    assert unet.config.layers_per_block == 2 and unet.config.time_embedding_type == "fourier"
    assert torch.equal(unet.time_proj.weight, net.embed.W)
