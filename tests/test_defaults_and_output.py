"""Cheap good defaults and clean output: the in-training grids' sampler, what a sampler costs
before it runs, the noise that is silenced (and only that), and plot axes that read well."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch

from lightning_score.config import ConfigError, SamplingConfig
from lightning_score.experiment import grid_sampling, load_config
from lightning_score.plots import log_axes
from lightning_score.quiet import silence_known_noise
from lightning_score.sampling.cost import RunEstimate, format_duration, nfe_per_sample
from lightning_score.sde import EDMSDE, VESDE, VPSDE

ROOT = Path(__file__).resolve().parents[1]


def test_grids_in_training_use_a_few_step_solver_unless_told_otherwise() -> None:
    paper = load_config(ROOT / "configs" / "cifar10_ncsnpp_ve.yaml")
    assert paper.sampling.sampler == "pc" and paper.sampling.corrector == "langevin"
    grid = grid_sampling(paper)  # 20 NFE, not the paper's 2000
    assert (grid.sampler, grid.steps, grid.corrector) == ("dpmpp_2m", 20, "none")
    assert nfe_per_sample(VESDE(sigma_max=50.0), grid) == 21  # 20 steps + the denoising step
    same = load_config(ROOT / "configs" / "cifar10_ncsnpp_ve.yaml", ["sample_grid.sampler=config"])
    assert grid_sampling(same) == same.sampling
    heun = load_config(None, ["sample_grid.sampler=heun", "sample_grid.steps=8"])
    assert (grid_sampling(heun).sampler, grid_sampling(heun).steps) == ("heun", 8)
    with pytest.raises(
        ConfigError, match=r"sample_grid.sampler='dpmpp2m' .*did you mean 'dpmpp_2m'"
    ):
        load_config(None, ["sample_grid.sampler=dpmpp2m"])
    with pytest.raises(ConfigError, match=r"sample_grid\.steps must be positive"):
        load_config(None, ["sample_grid.steps=0"])


@pytest.mark.parametrize(
    "cfg,expected",
    [
        (SamplingConfig(sampler="pc", steps=10), 10),  # one predictor step each, denoising free
        (SamplingConfig(sampler="pc", steps=10, corrector="langevin", corrector_steps=2), 30),
        (SamplingConfig(sampler="euler", steps=10), 11),  # + Tweedie's denoising step
        (SamplingConfig(sampler="euler", steps=10, denoise=False), 10),
        (SamplingConfig(sampler="heun", steps=10), 21),
        (SamplingConfig(sampler="dpmpp_2m", steps=10), 11),
        (SamplingConfig(sampler="edm", steps=17), 35),  # EDM's CIFAR-10 setting: 35 NFE
        (SamplingConfig(sampler="ode"), None),  # adaptive: known only once it runs
    ],
)
def test_nfe_per_sample_is_known_before_a_run(cfg: SamplingConfig, expected: int | None) -> None:
    sde = EDMSDE() if cfg.sampler == "edm" else VPSDE()
    assert nfe_per_sample(sde, cfg) == expected


def test_run_estimate_multiplies_out_and_reads_at_a_glance() -> None:
    estimate = RunEstimate(num=50_000, nfe=2000, seconds_per_eval=2e-3, device="cpu")
    assert estimate.seconds == pytest.approx(200_000.0)
    assert "about 55.6 h on cpu (50000 samples x (2000 NFE x 2 ms) per sample" in (
        estimate.describe()
    )
    assert [format_duration(s) for s in (42, 600, 7200)] == ["42 s", "10 min", "2.0 h"]


def test_known_library_noise_is_silenced_and_nothing_else(caplog: pytest.LogCaptureFixture) -> None:
    from lightning.pytorch.utilities import rank_zero_info
    from lightning.pytorch.utilities._pytree import _tree_flatten
    from lightning.pytorch.utilities.warnings import PossibleUserWarning
    from torchmetrics import MeanMetric
    from torchmetrics.image.kid import KernelInceptionDistance

    from lightning_score.evaluation import fid_helper_weights_path

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()
        KernelInceptionDistance(feature=torch.nn.Identity(), subset_size=2)  # memory note
        torch.jit.load(str(fid_helper_weights_path()))  # the offline Inception's deprecation
        _tree_flatten(torch.zeros(1))  # Lightning's pytree helper on this torch
        MeanMetric().compute()  # an empty bin of t
        warnings.warn_explicit(  # as Lightning's fit loop issues it for a short epoch
            "The number of training batches (39) is smaller than the logging interval "
            "Trainer(log_every_n_steps=50).",
            PossibleUserWarning,
            "fit_loop.py",
            321,
            module="lightning.pytorch.loops.fit_loop",
        )
        warnings.warn("a warning of our own", UserWarning, stacklevel=1)
        warnings.warn("an unrelated deprecation", FutureWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert messages == ["a warning of our own", "an unrelated deprecation"]

    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing litlogger")
        rank_zero_info("TPU available: False, using: 0 TPU cores")
        rank_zero_info("GPU available: False, used: False")  # the start banner names the device
        rank_zero_info("GPU available but not used. You can set it by doing `Trainer(...)`")
    assert [r.getMessage() for r in caplog.records] == [
        "GPU available but not used. You can set it by doing `Trainer(...)`"
    ]


def test_plot_axes_are_logarithmic_only_over_decades() -> None:
    uniform = [(i / 10 + (1e-5 if i == 0 else 0), (i + 1) / 10) for i in range(10)]
    narrow = {250: [(lo, hi, 1.09 + 0.01 * lo) for lo, hi in uniform]}
    assert log_axes(narrow) == (False, False)  # VP bins from eps = 1e-5: still uniform in t
    edges = torch.logspace(torch.log10(torch.tensor(0.002)), torch.log10(torch.tensor(80.0)), 11)
    geometric = {100: [(float(edges[i]), float(edges[i + 1]), 10.0 ** (2 - i)) for i in range(10)]}
    assert log_axes(geometric) == (True, True)
