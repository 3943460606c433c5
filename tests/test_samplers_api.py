"""Sampler API contracts: exact NFE, seeding, ODE encode/decode, refusals with reasons."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from lightning_score.config import SamplingConfig
from lightning_score.sampling import (
    CORRECTORS,
    PREDICTORS,
    SAMPLERS,
    batch_seed,
    check_sampling,
    make_generator,
    ode_decode,
    ode_encode,
    sample,
)
from lightning_score.sampling.analytic import gaussian_mixture_score, gaussian_score
from lightning_score.sde import SDE, VESDE, VPSDE, SubVPSDE

SDES = {"ve": lambda: VESDE(sigma_max=50.0), "vp": VPSDE, "subvp": SubVPSDE}
M = torch.tensor([0.5, -0.5, 0.25, 0.0])


class Counter:
    """The user's own count of score calls, independent of the library's."""

    def __init__(self, score_fn):
        self.score_fn, self.calls = score_fn, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.score_fn(x, t)


NFE_CASES = [
    # (config, expected NFE or None for adaptive); steps = 7 throughout
    *[
        (
            SamplingConfig(predictor=p, corrector=c, steps=7, corrector_steps=2),
            7 * ((p != "none") + 2 * (c != "none")),
        )
        for p in PREDICTORS
        for c in CORRECTORS
        if not (p == "none" and c == "none")
    ],
    (SamplingConfig(predictor="reverse_diffusion", steps=7, denoise=False), 7),
    (SamplingConfig(sampler="euler", steps=7), 7 + 1),  # + Tweedie denoising
    (SamplingConfig(sampler="euler", steps=7, denoise=False), 7),
    (SamplingConfig(sampler="heun", steps=7), 2 * 7 + 1),
    (SamplingConfig(sampler="heun", steps=7, denoise=False), 2 * 7),
    (SamplingConfig(sampler="dpmpp_2m", steps=7), 7 + 1),
    (SamplingConfig(sampler="ode", rtol=1e-3, atol=1e-3), None),
    (SamplingConfig(sampler="ode", rtol=1e-3, atol=1e-3, method="bosh3", denoise=False), None),
]


@pytest.mark.parametrize(
    ("cfg", "expected"), NFE_CASES, ids=lambda v: str(v) if isinstance(v, int) else None
)
def test_reported_nfe_is_the_true_count(cfg: SamplingConfig, expected: int | None) -> None:
    sde = VPSDE()
    counter = Counter(gaussian_score(sde, M, 0.7))
    out = sample(counter, sde, (16, 4), cfg, generator=make_generator(0))
    assert out.nfe == counter.calls
    if expected is not None:
        assert out.nfe == expected
    else:
        assert out.nfe >= 6  # dopri5 / bosh3 take several stages per step


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_same_samples_and_batches_differ(sampler: str) -> None:
    sde = VESDE(sigma_max=10.0)
    score = gaussian_score(sde, M, 0.7)
    corrector = "langevin" if sampler == "pc" else "none"
    cfg = SamplingConfig(sampler=sampler, corrector=corrector, steps=5, rtol=1e-3, atol=1e-3)

    def draw(seed: int) -> Tensor:
        return sample(score, sde, (8, 4), cfg, generator=make_generator(seed)).samples

    a, b = draw(batch_seed(3, rank=0, batch_idx=0)), draw(batch_seed(3, rank=0, batch_idx=0))
    assert torch.equal(a, b)
    for other in (batch_seed(3, rank=0, batch_idx=1), batch_seed(3, rank=1, batch_idx=0)):
        assert not torch.isclose(draw(other), a).any()


def test_batch_seeds_are_distinct_and_stable() -> None:
    seeds = {batch_seed(s, r, b) for s in range(4) for r in range(8) for b in range(64)}
    assert len(seeds) == 4 * 8 * 64
    assert all(0 <= s < 2**63 for s in seeds)
    # A pure function of its arguments (SeedSequence), so every process agrees on it.
    assert batch_seed(0, 0, 0) == batch_seed(0, 0, 0) != batch_seed(0, 0, 1)
    with pytest.raises(ValueError, match=">= 0"):
        batch_seed(0, -1, 0)


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("data", ["gaussian", "mixture"])
def test_ode_encode_then_decode_is_the_identity(sde_name: str, data: str) -> None:
    """The probability-flow ODE is a bijection; dopri5 at rtol = atol = 1e-5 both ways.

    Each direction's error is about rtol relative to the state, so the round trip stays well
    inside the 1e-3 relative bound of the issue.
    """
    sde = SDES[sde_name]()
    means = torch.tensor([[1.0, 0.5, 0.0, -0.5], [-1.0, -0.5, 0.0, 0.5]])
    if data == "gaussian":
        score = gaussian_score(sde, M, 0.7)
        x = M + 0.7 * torch.randn(64, 4, generator=make_generator(1))
    else:
        score = gaussian_mixture_score(sde, [0.4, 0.6], means, [0.3, 0.4])
        pick = torch.rand(64, generator=make_generator(1)) < 0.4
        x = torch.where(pick[:, None], means[0], means[1]) + 0.35 * torch.randn(
            64, 4, generator=make_generator(2)
        )
    latent = ode_encode(score, sde, x)
    back = ode_decode(score, sde, latent.samples)
    assert latent.nfe > 0 and back.nfe > 0
    # the latent is on the prior's scale, not the data's
    assert abs(latent.samples.std().item() / sde.prior_std() - 1) < 0.3
    assert ((back.samples - x).norm() / x.norm()).item() < 1e-3


@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize(
    "cfg",
    [SamplingConfig(steps=200), SamplingConfig(sampler="dpmpp_2m", steps=40, schedule="log_sigma")],
    ids=["pc", "dpmpp_2m"],
)
def test_dimensions_2_and_16(dim: int, cfg: SamplingConfig) -> None:
    """Gaussian data in 2 and 16 dims (the 4-d case is test_samplers_gaussian): the mean and the
    variance averaged over coordinates within 4.5 SE (n = 2000) plus the 10 / N allowance."""
    sde = VPSDE()
    m = torch.linspace(-0.5, 0.5, dim)
    x = sample(
        gaussian_score(sde, m, 0.7), sde, (2000, dim), cfg, generator=make_generator(3)
    ).samples
    n = x.shape[0]
    assert ((x.mean(0) - m).abs().max() / 0.7).item() <= 4.5 / math.sqrt(n) + 3 / cfg.steps
    var_err = abs(x.var(0).mean().item() / 0.49 - 1)
    assert var_err <= 4.5 * math.sqrt(2 / (n * dim)) + 10 / cfg.steps


def test_sampling_runs_on_the_device_of_the_generator() -> None:
    sde = VPSDE()
    out = sample(
        gaussian_score(sde, M, 0.7),
        sde,
        (4, 4),
        SamplingConfig(steps=3),
        generator=make_generator(0, "cpu"),
    )
    assert out.samples.device.type == "cpu" and out.samples.shape == (4, 4)


class NonlinearSDE(SDE):
    """dx = -sin(x) dt + dw: a valid SDE without the Gaussian kernel of a linear one."""

    centered = True
    default_eps = 1e-3
    default_parameterization = "vp"
    linear = False

    def sde(self, x, t):
        return -torch.sin(x), torch.ones_like(t)

    def marginal_prob(self, x, t):
        raise NotImplementedError("no closed-form kernel")

    def prior_std(self):
        return 1.0

    def time_of_sigma(self, sigma):
        raise NotImplementedError

    def likelihood_density_antiderivative(self, t):
        raise NotImplementedError

    def likelihood_density_inverse(self, value):
        raise NotImplementedError


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"predictor": "euler"},
            "unknown sampling.predictor 'euler'.*valid names: ancestral_sampling, euler_maruyama, none, reverse_diffusion",
        ),
        (
            {"corrector": "langevine"},
            "unknown sampling.corrector 'langevine' \\(did you mean 'langevin'\\?\\); valid names: ald, langevin, none",
        ),
        (
            {"sampler": "rk4"},
            "unknown sampling.sampler 'rk4'.*valid names: ddim, deis, dpmpp_2m, .*, pc, restart, unipc",
        ),
        (
            {"schedule": "cosine"},
            "unknown sampling.schedule 'cosine'.*edm, log_sigma, uniform",
        ),
        ({"steps": 0}, "steps must be a positive integer, got 0"),
        ({"steps": -3}, "steps must be a positive integer, got -3"),
        ({"snr": 0.0}, "snr must be > 0"),
        ({"snr": -0.1}, "snr must be > 0"),
        ({"corrector": "langevin", "corrector_steps": 0}, "corrector_steps must be >= 1"),
        ({"eps": 1.5}, "eps must lie in \\(0, T=1\\)"),
        ({"predictor": "none"}, "never moves the prior samples"),
        (
            {"sampler": "heun", "corrector": "langevin"},
            "corrector 'langevin' is an MCMC step of the 'pc' sampler",
        ),
        (
            {"sampler": "ode", "method": "euler"},
            "not an adaptive torchdiffeq method; choose one of: dopri5",
        ),
        ({"sampler": "ode", "rtol": 0.0}, "tolerances\\) must be > 0"),
        ({"sampler": "edm", "s_churn": -1.0}, "sampling.s_churn must be >= 0"),
        ({"sampler": "edm", "s_tmin": 2.0, "s_tmax": 1.0}, "sampling.s_tmin \\(2.0\\) must lie in"),
    ],
)
def test_bad_settings_are_refused_with_a_reason(change: dict, message: str) -> None:
    cfg = SamplingConfig(**change)
    with pytest.raises(ValueError, match=message):
        sample(gaussian_score(VPSDE(), M, 0.7), VPSDE(), (2, 4), cfg)


@pytest.mark.parametrize(
    ("predictor", "corrector", "what"),
    [
        ("euler_maruyama", "langevin", "corrector 'langevin'"),
        ("euler_maruyama", "ald", "corrector 'ald'"),
        ("reverse_diffusion", "none", "predictor 'reverse_diffusion'"),
        ("ancestral_sampling", "none", "predictor 'ancestral_sampling'"),
    ],
)
def test_steps_an_sde_cannot_support_are_refused(predictor: str, corrector: str, what: str) -> None:
    cfg = SamplingConfig(predictor=predictor, corrector=corrector)
    with pytest.raises(
        ValueError,
        match=f"{what} derives its step from the Gaussian kernel.*NonlinearSDE is not linear",
    ):
        check_sampling(NonlinearSDE(), cfg)


def test_euler_maruyama_needs_only_drift_and_diffusion() -> None:
    """The SDE-agnostic predictor runs on an SDE without a closed-form kernel."""
    sde = NonlinearSDE()
    out = sample(
        lambda x, t: -x, sde, (64, 2), SamplingConfig(steps=20), generator=make_generator(0)
    )
    assert out.nfe == 20 and torch.isfinite(out.samples).all()


def test_every_sde_supports_every_predictor_and_corrector() -> None:
    """Sub-VP included: the official code crashes for sub-VP + Langevin, we do not."""
    for sde in (make() for make in SDES.values()):
        for p in PREDICTORS:
            for c in CORRECTORS:
                if p != "none" or c != "none":
                    check_sampling(sde, SamplingConfig(predictor=p, corrector=c))


def test_progress_bar_shows_the_steps(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning_score import progress

    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)  # stderr is no terminal: log lines
    sde = VPSDE()
    sample(gaussian_score(sde, M, 0.7), sde, (2, 4), SamplingConfig(steps=9), progress=True)
    assert "pc euler_maruyama/none: 9/9 (100%)" in capsys.readouterr().err


def test_denoising_drops_the_noise_of_the_last_predictor_step_only() -> None:
    """The paper's final denoising returns the last predictor step's mean; with no predictor a
    Langevin step's mean is no denoised sample, so the output is the same as without it."""
    sde = VPSDE()
    score = gaussian_score(sde, M, 0.7)

    def draw(**kw) -> Tensor:
        return sample(
            score, sde, (8, 4), SamplingConfig(steps=5, **kw), generator=make_generator(0)
        ).samples

    assert torch.equal(
        draw(predictor="none", corrector="langevin"),
        draw(predictor="none", corrector="langevin", denoise=False),
    )
    assert not torch.equal(draw(), draw(denoise=False))
