"""The parameterization seam: each row's formulas, the official loss arithmetic of every paper
config, EDM's preconditioning and loss, and the absence of SDE type checks elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import Tensor

from lightning_score.config import LossConfig
from lightning_score.experiment import build_score_model, load_config
from lightning_score.losses import REDUCTIONS, TimeSample, dsm_loss, lognormal_times
from lightning_score.nets import ScoreModel
from lightning_score.parameterization import (
    EDMParameterization,
    VEParameterization,
    VPParameterization,
    build_parameterization,
)
from lightning_score.sde import EDMSDE, SDES, VESDE, VPSDE, SubVPSDE, batch_broadcast

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_score"


def _net(x: Tensor, c_noise: Tensor) -> Tensor:
    """A fixed nonlinear 'network' of the input and the conditioning."""
    return torch.tanh(x * 0.7 + batch_broadcast(c_noise, x) * 0.3) + 0.1 * x**2


def test_edm_preconditioning_is_the_papers_formula() -> None:
    """EDM Table 1 / eq. 7: D = c_skip x + c_out F(c_in x, c_noise) with sigma(t) = t."""
    sd = 0.5
    model = ScoreModel(_net, EDMParameterization(EDMSDE(), sigma_data=sd))
    x = torch.linspace(-3, 3, 4 * 6, dtype=torch.float64).reshape(4, 6)
    sigma = torch.tensor([0.002, 0.3, 2.0, 80.0], dtype=torch.float64)
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
    c_in = 1 / (sigma**2 + sd**2).sqrt()
    c_noise = sigma.log() / 4
    expected = c_skip[:, None] * x + c_out[:, None] * _net(c_in[:, None] * x, c_noise)
    torch.testing.assert_close(model.denoise(x, sigma), expected)
    # score = (D - x) / sigma^2 (alpha = 1)
    torch.testing.assert_close(model(x, sigma), (expected - x) / sigma[:, None] ** 2)


def test_edm_loss_is_lambda_times_denoising_error() -> None:
    """EDM eq. 2 / Table 1: lambda(sigma) ||D(x_0 + sigma n) - x_0||^2, lambda = (s^2 + sd^2)/(s sd)^2."""
    sd = 0.5
    model = ScoreModel(_net, EDMParameterization(EDMSDE(), sigma_data=sd))
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 6, generator=gen, dtype=torch.float64) * 0.5
    z = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    sigma = torch.tensor([0.002, 0.1, 1.0, 10.0, 80.0], dtype=torch.float64)
    times = TimeSample(sigma, torch.ones_like(sigma))
    got = dsm_loss(model, x0, times, "edm", "mean", noise=z)
    denoised = model.denoise(x0 + sigma[:, None] * z, sigma)
    lam = (sigma**2 + sd**2) / (sigma * sd) ** 2
    torch.testing.assert_close(got, lam * ((denoised - x0) ** 2).mean(1))


def test_lognormal_times_follow_edm_p_train() -> None:
    """ln sigma ~ N(-1.2, 1.2^2) (EDM's p_train), t = sigma on the EDM schedule."""
    sde = EDMSDE()
    cfg = LossConfig(eps=sde.default_eps)
    times = lognormal_times(
        sde, 200_000, cfg, torch.device("cpu"), torch.Generator().manual_seed(1)
    )
    logs = times.t.double().log()
    assert abs(logs.mean().item() + 1.2) < 0.01 and abs(logs.std().item() - 1.2) < 0.01
    assert times.t.min() >= sde.default_eps and times.t.max() <= sde.T
    assert torch.equal(times.importance, torch.ones_like(times.t))


@pytest.mark.parametrize("name", sorted(SDES))
@pytest.mark.parametrize("row", ["ve", "vp", "edm"])
def test_every_row_gives_the_tweedie_score_of_its_denoiser(name: str, row: str) -> None:
    """Whatever the row and SDE: score = (alpha D - x) / std^2, and F* regresses D onto x_0."""
    sde = SDES[name]()
    param = build_parameterization(row, sde)
    model = ScoreModel(_net, param)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    z = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    t = torch.linspace(sde.default_eps, sde.T, 6, dtype=torch.float64)
    alpha, std = sde.alpha(t)[:, None], sde.std(t)[:, None]
    x = alpha * x0 + std * z
    torch.testing.assert_close(model(x, t), (alpha * model.denoise(x, t) - x) / std**2)
    # F = F* makes D = x_0 exactly: the target is the right regression target
    target = param.target(x0, z, t)
    torch.testing.assert_close(param.denoise(x, t, target), x0)


def _official_loss(model: ScoreModel, x0: Tensor, z: Tensor, t: Tensor, cfg) -> Tensor:
    """score_sde_pytorch's get_sde_loss_fn (losses.py), written out: the reference arithmetic."""
    sde = model.sde
    mean, std = sde.marginal_prob(x0, t)
    std_b = batch_broadcast(std, x0)
    score = model(mean + std_b * z, t)
    reduce_op = torch.mean if cfg.loss.reduce == "mean" else lambda v, dim: 0.5 * v.sum(dim)
    if cfg.loss.weighting == "likelihood":
        losses = reduce_op((score + z / std_b).flatten(1) ** 2, dim=-1) * sde.diffusion_sq(t)
    else:
        losses = reduce_op((score * std_b + z).flatten(1) ** 2, dim=-1)
    return losses.mean()


PAPER_CONFIGS = [
    "cifar10_ncsnpp_ve.yaml",
    "cifar10_ddpmpp_vp.yaml",
    "cifar10_ddpmpp_subvp.yaml",
    "celeba64_ncsnpp_ve.yaml",
    "lsun256_ncsnpp_ve.yaml",
    "church256_ncsnpp_ve.yaml",
    "celebahq256_ncsnpp_ve.yaml",
    "celebahq1024_ncsnpp_ve.yaml",
]


@pytest.mark.parametrize("config", PAPER_CONFIGS)
@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_paper_configs_reproduce_the_official_loss_and_gradient(
    config: str, weighting: str
) -> None:
    """Loss value and gradient equal the official code's on fixed draws (to 1e-6), for each paper
    config (its SDE, parameterization and reduce) with a tiny network of the same family; the
    official reduce_mean=False is half the sum (``half_sum``), which the VE configs use."""
    family = "ddpmpp_tiny" if "ddpmpp" in config else "ncsnpp_tiny"
    cfg = load_config(
        ROOT / "configs" / config,
        [f"model.name={family}", "data.image_size=16", f"loss.weighting={weighting}"],
    )
    cfg.model.kwargs = {}  # the tiny preset as it is (the 1024 px config shrinks its widths)
    torch.manual_seed(0)
    model = build_score_model(cfg).double()
    with torch.no_grad():  # zero-initialised layers would hide scaling mistakes
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(1)
    x0 = model.sde.scale_data(torch.rand(4, 3, 16, 16, generator=gen, dtype=torch.float64))
    z = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    t = torch.rand(4, generator=gen, dtype=torch.float64) * (1 - cfg.loss.eps) + cfg.loss.eps
    times = TimeSample(t, torch.ones_like(t))

    ours = dsm_loss(model, x0, times, cfg.loss.weighting, cfg.loss.reduce, noise=z).mean()
    grads = torch.autograd.grad(ours, [p for p in model.parameters() if p.requires_grad])
    official = _official_loss(model, x0, z, t, cfg)
    expected = torch.autograd.grad(official, [p for p in model.parameters() if p.requires_grad])
    torch.testing.assert_close(ours, official, rtol=1e-6, atol=0)
    scale = max(g.abs().max() for g in expected)
    assert max((g - e).abs().max() for g, e in zip(grads, expected, strict=True)) <= 1e-6 * scale
    if cfg.sde.name == "vesde":
        assert cfg.loss.reduce == "half_sum"  # the official VE configs' reduce_mean=False


def test_reductions_say_what_they_do() -> None:
    sq = torch.tensor([[1.0, 2.0, 3.0]])
    assert REDUCTIONS["mean"](sq).item() == 2.0
    assert REDUCTIONS["sum"](sq).item() == 6.0
    assert REDUCTIONS["half_sum"](sq).item() == 3.0


def test_song_rows_are_the_official_score_functions() -> None:
    """VE: F / sigma with F conditioned on ln sigma; VP: -F / std with F on 999 t."""
    x = torch.rand(3, 4, dtype=torch.float64)
    t = torch.tensor([0.01, 0.5, 1.0], dtype=torch.float64)
    ve = VESDE()
    got = ScoreModel(_net, VEParameterization(ve))(x, t)
    torch.testing.assert_close(got, _net(x, ve.sigma(t).log()) / ve.sigma(t)[:, None])
    for sde in (VPSDE(), SubVPSDE()):
        got = ScoreModel(_net, VPParameterization(sde))(x, t)
        torch.testing.assert_close(got, -_net(x, 999 * t) / sde.std(t)[:, None])


def _sde_type_checks(path: Path) -> list[str]:
    """``isinstance(..., <an SDE class>)`` and ``type(...) is <SDE class>`` in one source file."""
    names = set(SDES_CLASS_NAMES)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
            classes = node.args[1] if len(node.args) > 1 else None
            elts = classes.elts if isinstance(classes, ast.Tuple) else [classes]
            if any(getattr(e, "id", None) in names for e in elts):
                found.append(f"{path.name}:{node.lineno}")
        is_check = isinstance(node, ast.Compare) and any(isinstance(o, ast.Is) for o in node.ops)
        if is_check and any(getattr(c, "id", None) in names for c in node.comparators):
            found.append(f"{path.name}:{node.lineno}")
    return found


SDES_CLASS_NAMES = ("SDE", "VESDE", "VPSDE", "SubVPSDE", "EDMSDE")


def test_no_sde_type_checks_outside_the_seam() -> None:
    """VE / VP decisions live in the SDE and parameterization objects only."""
    allowed = {PACKAGE / "sde.py", PACKAGE / "parameterization.py"}
    found = [
        hit
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in allowed
        for hit in _sde_type_checks(path)
    ]
    assert not found, found
