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
    accepted = [p for p in params if p not in ("data_shape", "param", "num_classes")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        return f"model.kwargs has unknown keys {unknown} for network '{name}'; accepted: {accepted}"
    return None


def supports_labels(name: str) -> bool:
    """Whether network ``name`` can embed class labels (its factory takes ``num_classes``)."""
    return "num_classes" in inspect.signature(lookup(NETWORKS, name, "network")).parameters


#: the rows a network can be trained under (``score`` is for analytic scores, not networks)
NETWORK_PARAMETERIZATIONS = ("auto", "ve", "vp", "edm")


def validate_model_config(cfg: ModelConfig) -> None:
    """Check the ``model`` section: the network, its keyword arguments and its parameterization."""
    require_choice(cfg.name, NETWORKS, "model.name")
    problem = network_kwargs_error(cfg.name, dict(cfg.kwargs))
    require(problem is None, str(problem))
    require_choice(cfg.parameterization, set(NETWORK_PARAMETERIZATIONS), "model.parameterization")
    require(cfg.sigma_data > 0, f"model.sigma_data must be > 0, got {cfg.sigma_data}")
    require(cfg.num_classes >= 0, f"model.num_classes must be >= 0, got {cfg.num_classes}")
    require(
        0 <= cfg.label_dropout < 1,
        f"model.label_dropout (classifier-free guidance's p_uncond) must lie in [0, 1), got "
        f"{cfg.label_dropout}",
    )
    require(
        cfg.num_classes == 0 or supports_labels(cfg.name),
        f"network '{cfg.name}' has no label embedding: set model.num_classes=0 or use one of "
        f"{', '.join(sorted(n for n in NETWORKS if supports_labels(n)))}",
    )


def build_network(
    name: str,
    data_shape: Sequence[int],
    param: Parameterization,
    num_classes: int = 0,
    **kwargs: Any,
) -> nn.Module:
    """Network ``name`` for ``data_shape`` under ``param``; ``num_classes > 0``: class-conditional."""
    problem = network_kwargs_error(name, kwargs)
    if problem:
        raise ValueError(problem)
    if num_classes:
        kwargs["num_classes"] = num_classes
    return lookup(NETWORKS, name, "network")(tuple(data_shape), param, **kwargs)


__all__ = [
    "NETWORKS",
    "NETWORK_PARAMETERIZATIONS",
    "ScoreModel",
    "build_network",
    "network_kwargs_error",
    "supports_labels",
    "validate_model_config",
]
