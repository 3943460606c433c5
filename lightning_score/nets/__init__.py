"""Network registry. A factory takes ``(data_shape, sde, **kwargs)`` and returns ``net(x, cond)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from lightning_score.nets.mlp import toy_mlp
from lightning_score.nets.ncsnpp import NCSNPP_FACTORIES
from lightning_score.nets.score import ScoreModel
from lightning_score.nets.unet import small_unet
from lightning_score.registry import lookup
from lightning_score.sde import SDE

NetworkFactory = Callable[..., nn.Module]

NETWORKS: dict[str, NetworkFactory] = {
    "unet": small_unet,
    "mlp": toy_mlp,
    # NCSN++ / DDPM++ presets (Song et al. 2021, appendix H): ncsnpp_cifar10, ddpmpp_cifar10, ...
    **NCSNPP_FACTORIES,
}


def network_kwargs_error(name: str, kwargs: dict[str, Any]) -> str | None:
    """Why ``kwargs`` do not fit network ``name`` (unknown keys), or None when they do."""
    factory = lookup(NETWORKS, name, "network")
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    accepted = [p for p in params if p not in ("data_shape", "sde")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        return f"model.kwargs has unknown keys {unknown} for network '{name}'; accepted: {accepted}"
    return None


def build_network(name: str, data_shape: Sequence[int], sde: SDE, **kwargs: Any) -> nn.Module:
    problem = network_kwargs_error(name, kwargs)
    if problem:
        raise ValueError(problem)
    return lookup(NETWORKS, name, "network")(tuple(data_shape), sde, **kwargs)


__all__ = ["NETWORKS", "ScoreModel", "build_network", "network_kwargs_error"]
