"""From a config to ready objects: loading with every section checked by its owner, and the
builders of the SDE, the parameterization and the score model.

``config.py`` knows the schema and nothing else; each part of the package checks its own section
(``validate_sde_config``, ``validate_model_config``, ``validate_loss_config``,
``validate_data_config``, ``check_sampling``), and this module runs them all at load, before any
data is read, so a bad value fails with one line that names the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_score.config import (
    ConfigError,
    ExperimentConfig,
    SamplingConfig,
    check_finite,
    check_run_sections,
    config_from_dict,
    overlay,
    read_config,
    require_choice,
)
from lightning_score.data import check_labels, data_shape, validate_data_config
from lightning_score.losses import validate_loss_config
from lightning_score.nets import ScoreModel, build_network, validate_model_config
from lightning_score.parameterization import Parameterization, build_parameterization
from lightning_score.sampling import SAMPLERS, check_sampling
from lightning_score.sde import build_sde, validate_sde_config

GRID_USES_CONFIG = "config"  # sample_grid.sampler value: draw grids with the sampling section


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Every section's checks (filling in the defaults a section leaves open); returns ``cfg``."""
    check_finite(cfg)
    validate_sde_config(cfg.sde)
    sde = build_sde(cfg.sde)
    validate_model_config(cfg.model)
    if cfg.model.parameterization == "auto":  # the saved config names the row that runs
        cfg.model.parameterization = sde.default_parameterization
    validate_loss_config(cfg.loss, build_param(cfg))
    validate_data_config(cfg.data)
    check_labels(cfg.model.num_classes, cfg.data)
    check_sampling(sde, cfg.sampling)
    if cfg.sample_grid.sampler != GRID_USES_CONFIG:
        require_choice(
            cfg.sample_grid.sampler, {*SAMPLERS, GRID_USES_CONFIG}, "sample_grid.sampler"
        )
    check_run_sections(cfg)
    check_sampling(sde, grid_sampling(cfg))
    return cfg


def grid_sampling(cfg: ExperimentConfig) -> SamplingConfig:
    """The sampler of the in-training sample grids: ``sample_grid.sampler`` at
    ``sample_grid.steps`` with that sampler's defaults, or the ``sampling`` section itself when
    ``sample_grid.sampler=config``."""
    grid = cfg.sample_grid
    if grid.sampler == GRID_USES_CONFIG:
        return cfg.sampling
    return SamplingConfig(sampler=grid.sampler, steps=grid.steps)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    presets: list[str] | None = None,
) -> ExperimentConfig:
    """Schema defaults <- YAML at ``path`` (and its ``base:`` files) <- presets (e.g. ``gpu``,
    ``configs/presets/gpu.yaml``) <- ``key=value``; checked."""
    return validate(read_config(path, overrides, presets=presets))


def with_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """``cfg`` (e.g. a checkpoint's) with ``key=value`` overrides applied, checked."""
    return validate(overlay(cfg, overrides))


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """A checked config from its plain-dict form (e.g. a checkpoint's ``hyper_parameters``)."""
    return validate(config_from_dict(data))


def build_param(cfg: ExperimentConfig) -> Parameterization:
    """The parameterization (and through it the SDE) of a checked config."""
    return build_parameterization(
        cfg.model.parameterization, build_sde(cfg.sde), cfg.model.sigma_data
    )


def _fits(cfg: ExperimentConfig, shape: tuple[int, ...]) -> bool:
    """Whether the configured network takes data of ``shape``: one forward pass on the meta
    device (shapes only, no memory, no arithmetic)."""
    import torch

    with torch.device("meta"):
        param = build_param(cfg)
        net = build_network(cfg.model.name, shape, param, cfg.model.num_classes, **cfg.model.kwargs)
        labels = torch.zeros(1, dtype=torch.long) if cfg.model.num_classes else None
        try:
            ScoreModel(net, param)(torch.zeros(1, *shape), torch.full((1,), 0.5), labels)
        except RuntimeError:
            return False
    return True


def check_network_fits(cfg: ExperimentConfig) -> None:
    """Refuse, at load, a ``data.image_size`` that the network's down- and upsampling levels do
    not divide (it would fail at the first step with a size-mismatch traceback)."""
    shape = tuple(data_shape(cfg.data))
    if len(shape) != 3 or _fits(cfg, shape):
        return
    size = shape[-1]
    fitting = next(
        (n for k in range(1, 6) if _fits(cfg, (*shape[:-2], n := -(-size // 2**k) * 2**k, n))),
        None,
    )
    hint = f" (the nearest size above that fits: {fitting})" if fitting else ""
    raise ConfigError(
        f"data.image_size={size} does not fit model.name={cfg.model.name}: its down- and "
        f"upsampling levels need a size they divide evenly{hint}; change data.image_size or the "
        "network's levels"
    )


def build_score_model(cfg: ExperimentConfig) -> ScoreModel:
    """The untrained score model of a checked config: network plus parameterization."""
    param = build_param(cfg)
    net = build_network(
        cfg.model.name, data_shape(cfg.data), param, cfg.model.num_classes, **cfg.model.kwargs
    )
    return ScoreModel(net, param)


__all__ = [
    "build_param",
    "build_score_model",
    "check_network_fits",
    "from_dict",
    "grid_sampling",
    "load_config",
    "validate",
    "with_overrides",
]
