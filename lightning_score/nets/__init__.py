"""Network registry. A factory takes ``(data_shape, param, **kwargs)`` and returns ``net(x, c_noise)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from lightning_score.config import ModelConfig, require, require_choice
from lightning_score.nets.mlp import toy_mlp
from lightning_score.nets.ncsnpp import NCSNPP_FACTORIES
from lightning_score.nets.score import ScoreModel
from lightning_score.nets.unet import diffusers_unet2d, small_unet
from lightning_score.parameterization import Parameterization
from lightning_score.registry import lookup

NetworkFactory = Callable[..., nn.Module]

NETWORKS: dict[str, NetworkFactory] = {
    "unet": small_unet,
    "mlp": toy_mlp,
    # any diffusers UNet2DModel by its config (models converted from diffusers)
    "diffusers": diffusers_unet2d,
    # NCSN++ / DDPM++ presets (Song et al. 2021, appendix H): ncsnpp_cifar10, ddpmpp_cifar10, ...
    **NCSNPP_FACTORIES,
}


def network_kwargs_error(name: str, kwargs: dict[str, Any]) -> str | None:
    """Why ``kwargs`` do not fit network ``name`` (unknown keys), or None when they do."""
    factory = lookup(NETWORKS, name, "network")
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    accepted = [p for p in params if p not in ("data_shape", "param")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        return f"model.kwargs has unknown keys {unknown} for network '{name}'; accepted: {accepted}"
    return None


#: the rows a network can be trained under (``score`` is for analytic scores, not networks)
NETWORK_PARAMETERIZATIONS = ("auto", "ve", "vp", "edm")


def validate_model_config(cfg: ModelConfig) -> None:
    """Check the ``model`` section: the network, its keyword arguments and its parameterization."""
    require_choice(cfg.name, NETWORKS, "model.name")
    problem = network_kwargs_error(cfg.name, dict(cfg.kwargs))
    require(problem is None, str(problem))
    require_choice(cfg.parameterization, set(NETWORK_PARAMETERIZATIONS), "model.parameterization")
    require(cfg.sigma_data > 0, f"model.sigma_data must be > 0, got {cfg.sigma_data}")


def build_network(
    name: str, data_shape: Sequence[int], param: Parameterization, **kwargs: Any
) -> nn.Module:
    problem = network_kwargs_error(name, kwargs)
    if problem:
        raise ValueError(problem)
    return lookup(NETWORKS, name, "network")(tuple(data_shape), param, **kwargs)


__all__ = [
    "NETWORKS",
    "NETWORK_PARAMETERIZATIONS",
    "ScoreModel",
    "build_network",
    "network_kwargs_error",
    "validate_model_config",
]
