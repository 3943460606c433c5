"""A diffusers model (UNet2DModel + scheduler) as a lightning-score experiment, for
``lscore convert``: the result is an export (``model.safetensors`` with its config) that every
command takes, so every sampler, the likelihood and the ablation run on e.g. a DDPM model.

The network is the ``diffusers`` entry of the network registry (any UNet2DModel, by its config);
the SDE and the parameterization come from the scheduler (``nets/diffusers_interop.py``). What a
diffusers folder does not say is the data set it models: the caller names it, because the
likelihood and the ablation's reference data read it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from lightning_score.config import ExperimentConfig, read_config
from lightning_score.experiment import validate
from lightning_score.nets.diffusers_interop import (
    diffusers_entries,
    load_diffusers_unet,
    unet_kwargs,
)


def diffusers_experiment(
    source: str | Path, data_overrides: list[str]
) -> tuple[ExperimentConfig, dict[str, torch.Tensor]]:
    """The config and the score model's weights of the diffusers model at ``source``;
    ``data_overrides`` (``data.name=cifar10`` ...) say what it was trained on."""
    unet = load_diffusers_unet(source)
    _, entries = diffusers_entries(source, unet)
    size = unet.config.sample_size
    side = size if isinstance(size, int) else size[0]
    overrides = [
        f"name=diffusers-{Path(source).resolve().name}",
        "model.name=diffusers",
        f"data.image_size={side}",
        *(f"{k}={v}" for k, v in entries.items()),
        *data_overrides,
    ]
    cfg = read_config(None, overrides)
    cfg.model = dataclasses.replace(cfg.model, kwargs=unet_kwargs(unet))
    state = {f"net.unet.{k}": v for k, v in unet.state_dict().items()}
    return validate(cfg), state


__all__ = ["diffusers_experiment"]
