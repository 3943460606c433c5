"""NCSN++ / DDPM++ network family: presets, parameter counts, FIR resampling, forward/backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_score.nets import NETWORKS, ScoreModel, build_network, network_kwargs_error
from lightning_score.nets.fir import FIRConv2d, downsample_2d, fir_filter, upsample_2d
from lightning_score.nets.ncsnpp import PRESETS
from lightning_score.parameterization import build_parameterization
from lightning_score.sde import VESDE, VPSDE, SubVPSDE


def row(sde):
    """The SDE's own parameterization (Song's VE row for VE, the VP row for VP / sub-VP)."""
    return build_parameterization("auto", sde)


# Parameter counts of the official score_sde_pytorch models (sum of model.parameters()).
OFFICIAL_COUNTS = {
    "ncsnpp_cifar10": ((3, 32, 32), 62_758_915),
    "ncsnpp_cifar10_deep": ((3, 32, 32), 107_587_075),
    "ddpmpp_cifar10": ((3, 32, 32), 61_804_419),
    "ddpmpp_cifar10_deep": ((3, 32, 32), 106_632_579),
    "ncsnpp_256": ((3, 256, 256), 65_574_549),
}


def _sde_for(name: str):
    return row(VPSDE() if name.startswith("ddpmpp") else VESDE())


def _count(name: str, shape: tuple[int, ...]) -> int:
    with torch.device("meta"):  # construction only: no memory, no init cost
        net = build_network(name, shape, _sde_for(name))
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", sorted(OFFICIAL_COUNTS))
def test_preset_matches_official_parameter_count(name: str) -> None:
    shape, expected = OFFICIAL_COUNTS[name]
    assert _count(name, shape) == expected


def test_other_presets_build_with_expected_sizes() -> None:
    # CelebA-64 has the CIFAR-10 layers; attention moves to the third level, which has the same
    # width, so the count is the CIFAR-10 one.
    assert _count("ncsnpp_celeba64", (3, 64, 64)) == 62_758_915
    assert _count("ncsnpp_tiny", (1, 16, 16)) < 300_000
    assert _count("ddpmpp_tiny", (1, 16, 16)) < 300_000
    assert set(PRESETS) <= set(NETWORKS)


def test_ncsnpp_cifar10_forward_batch2() -> None:
    torch.manual_seed(0)
    sde = VESDE()
    net = build_network("ncsnpp_cifar10", (3, 32, 32), row(sde)).eval()
    model = ScoreModel(net, row(sde))
    x = torch.rand(2, 3, 32, 32)
    t = torch.tensor([0.1, 0.9])
    sigma = sde.sigma(t)
    with torch.no_grad():
        out = net(x, sigma.log())
        score = model(x, t)
    assert out.shape == (2, 3, 32, 32)
    assert torch.isfinite(out).all()
    # Song's VE row: the network estimates sigma * score, divided once, by the parameterization.
    torch.testing.assert_close(score, out / sigma[:, None, None, None], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "sde"),
    [("ncsnpp_tiny", VESDE()), ("ddpmpp_tiny", VPSDE()), ("ddpmpp_tiny", SubVPSDE())],
)
def test_tiny_presets_train_one_step(name: str, sde) -> None:
    torch.manual_seed(0)
    net = build_network(name, (1, 16, 16), row(sde))
    model = ScoreModel(net, row(sde))
    x0 = sde.scale_data(torch.rand(4, 1, 16, 16))
    t = torch.rand(4) * (1 - 1e-3) + 1e-3
    z = torch.randn_like(x0)
    mean, std = sde.marginal_prob(x0, t)
    xt = mean + std[:, None, None, None] * z
    loss = ((model(xt, t) * std[:, None, None, None] + z) ** 2).mean()
    loss.backward()
    for pname, p in net.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        else:  # the Fourier projection is frozen, as in the official model
            assert pname == "embed.W" and p.grad is None
    assert any(p.grad.abs().sum() > 0 for p in net.parameters() if p.grad is not None)


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown network 'ncsnpp_cifar'") as err:
        build_network("ncsnpp_cifar", (3, 32, 32), row(VESDE()))
    for name in PRESETS:
        assert name in str(err.value)


def test_unknown_knob_is_rejected_with_the_accepted_ones() -> None:
    problem = network_kwargs_error("ncsnpp_tiny", {"nf": 32, "num_blocks": 2})
    assert problem is not None and "num_blocks" in problem and "num_res_blocks" in problem
    assert network_kwargs_error("ncsnpp_tiny", {"nf": 32, "ch_mult": [1, 2, 2]}) is None
    with pytest.raises(ValueError, match="not one of"):
        build_network("ncsnpp_tiny", (1, 16, 16), row(VESDE()), progressive="skip")
    with pytest.raises(ValueError, match="unknown keys \\['scale_by_sigma'\\]"):
        build_network("ddpmpp_tiny", (1, 16, 16), row(VPSDE()), scale_by_sigma=True)
    with pytest.raises(ValueError, match="divisible"):
        build_network("ncsnpp_tiny", (1, 15, 15), row(VESDE()))


def test_config_lists_override_knobs() -> None:
    net = build_network("ncsnpp_tiny", (3, 16, 16), row(VESDE()), ch_mult=[1, 1, 2], nf=8)
    assert net.cfg.ch_mult == (1, 1, 2) and len(net.down) == 3


def test_input_centering_follows_the_sde() -> None:
    torch.manual_seed(0)
    ve = build_network("ncsnpp_tiny", (1, 16, 16), row(VESDE())).eval()
    assert ve.center_input  # VE data in [0, 1]; the network maps them to [-1, 1]
    assert not build_network("ddpmpp_tiny", (1, 16, 16), row(VPSDE())).center_input
    plain = build_network("ncsnpp_tiny", (1, 16, 16), row(VESDE()), center_input=False).eval()
    plain.load_state_dict(ve.state_dict())
    x, sigma = torch.rand(2, 1, 16, 16), torch.tensor([0.5, 5.0]).log()
    with torch.no_grad():
        torch.testing.assert_close(ve(x, sigma), plain(2 * x - 1, sigma))


def test_channels_last_and_bf16() -> None:
    torch.manual_seed(0)
    net = build_network("ncsnpp_tiny", (3, 16, 16), row(VESDE())).eval()
    x, sigma = torch.rand(2, 3, 16, 16), torch.tensor([0.05, 20.0]).log()
    with torch.no_grad():
        ref = net(x, sigma)
        cl = net.to(memory_format=torch.channels_last)(
            x.to(memory_format=torch.channels_last), sigma
        )
        torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x, sigma)
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max()


# -- FIR resampling ----------------------------------------------------------------------------
def test_fir_resampling_keeps_constant_images_and_halves_or_doubles() -> None:
    k = fir_filter([1, 3, 3, 1])
    ones = torch.ones(2, 3, 8, 8)
    up, down = upsample_2d(ones, k), downsample_2d(ones, k)
    assert up.shape == (2, 3, 16, 16) and down.shape == (2, 3, 4, 4)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.ones(2, 3, 12, 12))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.ones(2, 3, 2, 2))


def test_fused_fir_conv_equals_resample_then_conv_inside_the_image() -> None:
    """StyleGAN2's fused ops are conv(upsample(x)) and downsample(conv(x)) up to the borders."""
    torch.manual_seed(0)
    k = fir_filter([1, 3, 3, 1]).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    up = FIRConv2d(3, 5, up=True).double()
    down = FIRConv2d(3, 5, down=True).double()
    for m in (up, down):
        torch.nn.init.normal_(m.weight)
        torch.nn.init.normal_(m.bias)
    ref_up = F.conv2d(upsample_2d(x, k), up.weight, up.bias, padding=1)
    ref_down = downsample_2d(F.conv2d(x, down.weight, padding=1), k) + down.bias[:, None, None]
    assert up(x).shape == (2, 5, 32, 32) and down(x).shape == (2, 5, 8, 8)
    torch.testing.assert_close(up(x)[..., 4:-4, 4:-4], ref_up[..., 4:-4, 4:-4])
    torch.testing.assert_close(down(x)[..., 2:-2, 2:-2], ref_down[..., 2:-2, 2:-2])
