"""The image conditioning bench's method table holds for both formulations it was run on: every
config passes the sampler validation (RePaint's walks refuse an ODE solver, so on EDM's dpmpp_2m
the bench must move them to pc) and each method gets the NFE budget it claims."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lightning_score.config import SamplingConfig, SDEConfig
from lightning_score.sampling import check_sampling
from lightning_score.sde import build_sde

BENCH = Path(__file__).resolve().parents[1] / "bench" / "conditioning_images.py"


def _bench():
    spec = importlib.util.spec_from_file_location("conditioning_images", BENCH)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.parametrize(
    ("sde_name", "sampler"), [("vpsde", "pc"), ("edm", "dpmpp_2m")], ids=["vp-pc", "edm-dpmpp"]
)
def test_every_method_config_is_valid(sde_name: str, sampler: str) -> None:
    bench = _bench()
    sde = build_sde(SDEConfig(name=sde_name))
    base = SamplingConfig(sampler=sampler, steps=19)
    table = bench.methods(base, 800, 0.5)
    for name, (kwargs, cfg) in table.items():
        check_sampling(sde, cfg)  # raises ConfigError on a config the samplers refuse
        if kwargs["method"] == "smc":
            assert kwargs["particles"] * (cfg.steps + 1) == 800, name
        elif cfg.resample_repeats > 1:
            assert cfg.sampler == "pc" and cfg.steps * cfg.resample_repeats == 800, name
        else:
            assert cfg.steps == 800, name
    assert ("replacement (pc)" in table) == (sampler != "pc")
    assert table["replacement"][1].sampler == sampler  # the model's own sampler stays the base
    assert table["DPS"][0]["network_sigma"] == 5.0  # the commands' default: 10 x sigma_data
