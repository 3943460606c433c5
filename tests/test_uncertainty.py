"""Uncertainty of the ablation's quality figures: the paired bootstrap, its FID and sliced
Wasserstein statistics, the within-noise verdicts, and their place in the table and plot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.container import ErrorbarContainer
from scipy import linalg

from lightning_score.commands.ablate import ablation_figure
from lightning_score.evaluation.image_metrics import FrechetDistance, _Precomputed
from lightning_score.evaluation.sliced import project, sliced_wasserstein
from lightning_score.evaluation.uncertainty import (
    Bootstrap,
    frechet_statistic,
    paired_bootstrap,
    sliced_wasserstein_statistic,
    verdicts,
)

N, D = 128, 16


def gaussian(n: int, shift: float, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(n, D, generator=gen, dtype=torch.float64) + shift


def test_bootstrap_standard_error_matches_the_spread_over_fresh_draws() -> None:
    """What the error bars claim: the figure's spread if the samples were drawn again."""
    gen = torch.Generator().manual_seed(0)
    fresh = [sliced_wasserstein(gaussian(N, 0, gen), gaussian(N, 0.3, gen)) for _ in range(40)]
    spread = float(np.std(fresh, ddof=1))
    for seed in range(3):
        x, y = gaussian(N, 0, gen), gaussian(N, 0.3, gen)
        stat = sliced_wasserstein_statistic([project(x)], project(y))
        se = float(paired_bootstrap(stat, N, N, 200, seed).stderr()[0])
        assert 0.6 < se / spread < 1.6, (se, spread)  # measured: 0.83-1.0


def test_identity_resample_reproduces_the_figure() -> None:
    gen = torch.Generator().manual_seed(1)
    x, y = gaussian(N, 0, gen), gaussian(N, 0.3, gen)
    stat = sliced_wasserstein_statistic([project(x), project(x + 0.1)], project(y))
    same = torch.arange(N)[None]
    got = stat(same, same)[0]
    assert got.tolist() == pytest.approx([sliced_wasserstein(x, y), sliced_wasserstein(x + 0.1, y)])


def test_pairing_resolves_a_difference_smaller_than_each_figures_noise() -> None:
    """Two settings from the same seeds differ by a shift far below each figure's standard
    error; scored on the same resampled indices, the difference is still clear."""
    gen = torch.Generator().manual_seed(2)
    x, y = gaussian(N, 0, gen), gaussian(N, 0.5, gen)
    stat = sliced_wasserstein_statistic([project(x), project(x + 0.01)], project(y))
    boot = paired_bootstrap(stat, N, N, 200, seed=0)
    gap = sliced_wasserstein(x, y) - sliced_wasserstein(x + 0.01, y)
    assert 0 < gap < float(boot.stderr().min()) / 2
    assert not boot.within_noise(0, 1)
    lo, hi = boot.difference_interval(0, 1)
    assert lo > 0 and hi - lo < gap  # narrower than the gap, which is below each se
    # identical settings are always within noise: their difference is exactly 0
    same = paired_bootstrap(sliced_wasserstein_statistic([project(x)] * 2, project(y)), N, N, 50)
    assert same.within_noise(0, 1) and same.difference_interval(0, 1) == (0.0, 0.0)


@pytest.mark.parametrize("n", [5, 40])  # fewer and more samples than dimensions
def test_frechet_statistic_is_fid(n: int) -> None:
    gen = torch.Generator().manual_seed(3)
    d = 12
    feats = torch.randn(n, d, generator=gen, dtype=torch.float64) * 0.7 + 0.2
    ref = torch.randn(200, d, generator=gen, dtype=torch.float64)
    mu_r, sigma_r = ref.mean(0), torch.cov(ref.T)
    got = float(frechet_statistic([feats], mu_r, sigma_r)(torch.arange(n)[None], None)[0, 0])
    mu, sigma = feats.mean(0), torch.cov(feats.T)  # FID's closed form, with scipy's sqrtm
    root = linalg.sqrtm(sigma.numpy() @ sigma_r.numpy()).real
    closed = float((mu - mu_r).square().sum() + sigma.trace() + sigma_r.trace()) - 2 * np.trace(
        root
    )
    assert got == pytest.approx(closed, rel=1e-6)
    fid = FrechetDistance(feature=_Precomputed(d))  # and torchmetrics' (what the table shows)
    fid.update(ref, real=True)
    fid.update(feats, real=False)
    assert got == pytest.approx(float(fid.compute()), rel=1e-5)


def test_frechet_replicate_is_the_fid_of_the_resampled_rows() -> None:
    """A bootstrap replicate scores each distinct row once, weighted by its count: the same FID
    as the resample with its repeated rows, for fewer and for more samples than dimensions."""
    gen = torch.Generator().manual_seed(4)
    d = 12
    ref = torch.randn(200, d, generator=gen, dtype=torch.float64)
    mu_r, sigma_r = ref.mean(0), torch.cov(ref.T)
    for n in (8, 60):
        feats = torch.randn(n, d, generator=gen, dtype=torch.float64) * 0.7 + 0.2
        idx = torch.randint(n, (3, n), generator=gen)
        assert all(len(i.unique()) < n for i in idx)  # duplicates, so the weights matter
        got = frechet_statistic([feats, feats + 0.1], mu_r, sigma_r)(idx, None)
        for b, i in enumerate(idx):
            for k, f in enumerate((feats[i], feats[i] + 0.1)):
                whole = frechet_statistic([f], mu_r, sigma_r)(torch.arange(n)[None], None)
                # centring leaves a zero eigenvalue, computed as +-eps * |gram|; its square root
                # (about 1e-8 of the trace) is the two forms' only difference
                assert float(got[b, k]) == pytest.approx(float(whole[0, 0]), rel=1e-7)


def test_verdicts_compare_with_the_best_and_the_previous_setting_of_a_family() -> None:
    # settings: a@1, a@2, b@1; replicates make a@2 and b@1 indistinguishable, a@1 clearly worse
    reps = torch.stack(
        [torch.tensor([3.0, 1.0, 1.1]) + 0.2 * torch.randn(3, generator=torch.Generator().manual_seed(i)) * torch.tensor([0.1, 1, 1]) for i in range(100)]
    )  # fmt: skip
    reps[:, 2] = reps[:, 1] + torch.linspace(-0.3, 0.5, 100)  # b@1 - a@2 straddles 0
    found = verdicts([3.0, 1.0, 1.1], ["a", "a", "b"], Bootstrap(reps))
    assert [v.best for v in found] == [False, True, False]
    assert [v.same_as_best for v in found] == [False, False, True]
    assert [v.previous for v in found] == [None, 0, None]
    assert found[1].same_as_previous is False and found[0].same_as_previous is None


def test_the_plot_draws_one_standard_error_bars() -> None:
    rows = [
        {"sampler": "heun", "nfe": 5.0, "q": 0.4, "q_stderr": 0.05},
        {"sampler": "heun", "nfe": 9.0, "q": 0.3, "q_stderr": 0.02},
    ]
    fig = ablation_figure(rows, "q")
    (bars,) = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    segments = bars.lines[2][0].get_segments()
    assert [(s[0][1], s[1][1]) for s in segments] == [
        pytest.approx((0.35, 0.45)),
        pytest.approx((0.28, 0.32)),
    ]
