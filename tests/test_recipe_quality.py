"""The side-by-side bench's own arithmetic and inputs (its training runs need the peers and an hour):
equal-time ratios interpolate the peer in log time and say where they cannot, reused reference
statistics are refused when they are another extractor's, and the Fashion-MNIST config that the
post-hoc EMA scan trains is the bench's EDM recipe."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lightning_score.config import flatten
from lightning_score.evaluation.reference import ReferenceStats
from lightning_score.experiment import load_config

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "recipe_quality", ROOT / "bench" / "recipe_quality.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_equal_time_ratio_interpolates_the_peer_in_log_time() -> None:
    bench = _bench()
    budgets = [100, 400, 1600]
    # the peer's FID is linear in log(seconds): 300 - 50 * log2(budget / 100) at 0.1 s/step
    peer = {"fid": [300.0, 200.0, 100.0], "s_per_step": 0.1}
    ours = {"fid": [150.0, 120.0, 90.0], "s_per_step": 0.2}  # twice the peer's time per step
    out = bench.equal_time_ratio(ours, peer, budgets)
    assert [o["seconds"] for o in out] == pytest.approx([20.0, 80.0, 320.0])
    # at 20 s the peer has made 200 steps: FID 300 - 50 * log2(2) = 250; at 80 s, 800 steps: 150
    assert out[0]["ratio"] == pytest.approx(150.0 / 250.0)
    assert out[1]["ratio"] == pytest.approx(120.0 / 150.0)
    assert out[2]["ratio"] is None  # 320 s is past the peer's last budget (160 s)


def _stats(path: Path, extractor: str, dim: int = 4) -> ReferenceStats:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(dim, dim))
    stats = ReferenceStats(
        mu=rng.normal(size=dim),
        sigma=a @ a.T,
        num_samples=123,
        features=np.zeros((0, dim), np.float32),
        extractor=extractor,
    )
    stats.save(path)
    return stats


def test_reference_stats_are_read_from_a_stats_file(tmp_path: Path) -> None:
    bench = _bench()
    extractor = SimpleNamespace(name="inception-2015-12-05", num_features=4)
    saved = _stats(tmp_path / "test.npz", extractor.name)
    args = argparse.Namespace(ref_stats=tmp_path / "test.npz")
    mu, sigma, described = bench.reference_stats(args, extractor)
    assert torch.equal(mu, torch.from_numpy(saved.mu)) and torch.equal(
        sigma, torch.from_numpy(saved.sigma)
    )
    assert "123 images" in described


def test_reference_stats_of_another_extractor_are_refused(tmp_path: Path) -> None:
    bench = _bench()
    _stats(tmp_path / "other.npz", "clip-vit")
    extractor = SimpleNamespace(name="inception-2015-12-05", num_features=4)
    args = argparse.Namespace(ref_stats=tmp_path / "other.npz")
    with pytest.raises(ValueError, match="holds 'clip-vit' features, not 'inception-2015-12-05'"):
        bench.reference_stats(args, extractor)


def test_the_fashion_power_config_is_the_benchs_edm_recipe() -> None:
    bench = _bench()
    args = argparse.Namespace(
        channels="32,64", data_root="data", image_size=16, batch_size=64, lr=2e-4, warmup=200,
        ema_decay=0.999, our_ema="power", our_std_rel=0.10, our_sampler="dpmpp_2m",
    )  # fmt: skip
    recipe = flatten(dataclasses.asdict(bench.our_config("edm", args, 0, [500, 1000], Path("x"))))
    config = flatten(
        dataclasses.asdict(load_config(ROOT / "configs" / "fashion16_edm_power.yaml", []))
    )
    differ = {k for k in recipe.keys() | config.keys() if recipe.get(k) != config.get(k)}
    # what the scan needs on top (two widths and their snapshots) and what names the run
    expected = {"name", "out_dir", "resume", "ema.std_rel", "ema.snapshot_every_n_steps"}
    assert differ == expected, sorted(differ ^ expected)
    assert config["ema.std_rel"] == [0.05, 0.10] and config["ema.snapshot_every_n_steps"] > 0
    assert math.gcd(*[500, 1000]) == recipe["checkpoint.every_n_steps"]
