"""Load score_sde_pytorch checkpoints (``checkpoint_*.pth``) as our NCSN++ / DDPM++ score models.

An official checkpoint is ``{'model', 'ema', 'optimizer', 'step'}``: ``model`` is the state dict of
``DataParallel(NCSNpp)`` (keys ``module.all_modules.<i>.<layer>``, plus the SMLD noise table
``module.sigmas``), ``ema`` is ``{'decay', 'num_updates', 'shadow_params'}`` where
``shadow_params`` lists the averaged tensors of the trainable parameters in ``model.parameters()``
order (the frozen Fourier projection ``W`` is not among them). The paper's numbers come from the
EMA weights, so those are the default.

The file is a pickle. It is read with ``torch.load(weights_only=True)``, which only rebuilds
tensors and plain containers; a file that needs more than that is refused unless the caller
passes ``trust_checkpoint=True`` (``--trust-checkpoint``), because a full unpickle can run any code
stored in it.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_score.nets.ncsnpp import (
    PRESETS,
    NCSNpp,
    build_ncsnpp,
    from_official_state_dict,
    official_key_map,
)
from lightning_score.nets.score import ScoreModel
from lightning_score.sde import SDE, VESDE, VPSDE, SubVPSDE


class OfficialCheckpointError(ValueError):
    """An official checkpoint that cannot be read or does not fit the requested network."""


@dataclass(frozen=True)
class OfficialConfig:
    """What one score_sde_pytorch config file fixes: network preset, image size, SDE, sampler."""

    preset: str
    image_size: int
    sde: str  # vesde | vpsde | subvpsde
    sigma_max: float = 50.0
    num_scales: int = 1000
    overrides: dict[str, Any] = field(default_factory=dict)
    data: str = "cifar10"  # our data set name (lightning_score.data.DATASETS)
    ema_decay: float = 0.999
    snr: float = 0.16


_NCSNPP_ON_VP = {"embedding_type": "positional", "scale_by_sigma": False}
_NCSNPP_1024 = {
    "nf": 16,
    "ch_mult": (1, 2, 4, 8, 16, 32, 32, 32),
    "num_res_blocks": 1,
}

OFFICIAL_CONFIGS: dict[str, OfficialConfig] = {
    # CIFAR-10, continuous time (configs/{ve,vp,subvp}/cifar10_*_continuous.py)
    "ve/cifar10_ncsnpp_continuous": OfficialConfig("ncsnpp_cifar10", 32, "vesde"),
    "ve/cifar10_ncsnpp_deep_continuous": OfficialConfig("ncsnpp_cifar10_deep", 32, "vesde"),
    "vp/cifar10_ddpmpp_continuous": OfficialConfig("ddpmpp_cifar10", 32, "vpsde", ema_decay=0.9999),
    "vp/cifar10_ddpmpp_deep_continuous": OfficialConfig(
        "ddpmpp_cifar10_deep", 32, "vpsde", ema_decay=0.9999
    ),
    "subvp/cifar10_ddpmpp_continuous": OfficialConfig(
        "ddpmpp_cifar10", 32, "subvpsde", ema_decay=0.9999
    ),
    "subvp/cifar10_ddpmpp_deep_continuous": OfficialConfig(
        "ddpmpp_cifar10_deep", 32, "subvpsde", ema_decay=0.9999
    ),
    "vp/cifar10_ncsnpp_continuous": OfficialConfig(
        "ncsnpp_cifar10", 32, "vpsde", overrides=_NCSNPP_ON_VP, ema_decay=0.9999
    ),
    "vp/cifar10_ncsnpp_deep_continuous": OfficialConfig(
        "ncsnpp_cifar10_deep", 32, "vpsde", overrides=_NCSNPP_ON_VP, ema_decay=0.9999
    ),
    "subvp/cifar10_ncsnpp_continuous": OfficialConfig(
        "ncsnpp_cifar10", 32, "subvpsde", overrides=_NCSNPP_ON_VP, ema_decay=0.9999
    ),
    "subvp/cifar10_ncsnpp_deep_continuous": OfficialConfig(
        "ncsnpp_cifar10_deep", 32, "subvpsde", overrides=_NCSNPP_ON_VP, ema_decay=0.9999
    ),
    # 256 px (configs/ve/*_256_ncsnpp_continuous.py, LSUN church / bedroom)
    "ve/celebahq_256_ncsnpp_continuous": OfficialConfig(
        "ncsnpp_256", 256, "vesde", 348.0, 2000, data="folder", snr=0.075
    ),
    "ve/ffhq_256_ncsnpp_continuous": OfficialConfig(
        "ncsnpp_256", 256, "vesde", 348.0, 2000, data="folder", snr=0.075
    ),
    "ve/church_ncsnpp_continuous": OfficialConfig(
        "ncsnpp_256", 256, "vesde", 380.0, 2000, data="lsun", snr=0.075
    ),
    "ve/bedroom_ncsnpp_continuous": OfficialConfig(
        "ncsnpp_256", 256, "vesde", 378.0, 2000, data="lsun", snr=0.075
    ),
    # 1024 px (configs/ve/{celebahq,ffhq}_ncsnpp_continuous.py)
    **{
        f"ve/{name}_ncsnpp_continuous": OfficialConfig(
            "ncsnpp_256",
            1024,
            "vesde",
            sigma_max=1348.0,
            num_scales=2000,
            overrides=_NCSNPP_1024,
            data="folder",
            ema_decay=0.9999,
            snr=0.15,
        )
        for name in ("celebahq", "ffhq")
    },
}


def make_sde(
    name: str,
    sigma_min: float = 0.01,
    sigma_max: float = 50.0,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    num_scales: int = 1000,
) -> SDE:
    if name == "vesde":
        return VESDE(sigma_min=sigma_min, sigma_max=sigma_max, N=num_scales)
    if name in ("vpsde", "subvpsde"):
        cls = VPSDE if name == "vpsde" else SubVPSDE
        return cls(beta_min=beta_min, beta_max=beta_max, N=num_scales)
    raise OfficialCheckpointError(f"unknown SDE '{name}'; valid: vesde, vpsde, subvpsde")


def _normalize_name(config: str) -> str:
    """Accept 'configs/ve/x.py', 've/x.py' and 've/x' for the official config files."""
    return config.removeprefix("configs/").removesuffix(".py")


@dataclass(frozen=True)
class Resolved:
    """The network and SDE an official checkpoint needs."""

    preset: str
    data_shape: tuple[int, ...]
    sde: SDE
    overrides: dict[str, Any]
    official: OfficialConfig | None


def resolve_config(
    config: str,
    data_shape: Sequence[int] | None = None,
    sde: SDE | None = None,
    **overrides: Any,
) -> Resolved:
    """Network preset, data shape and SDE for an official config name or one of our presets.

    For a preset name, ``data_shape`` and ``sde`` are required (nothing else says them).
    """
    name = _normalize_name(config)
    if name in OFFICIAL_CONFIGS:
        oc = OFFICIAL_CONFIGS[name]
        shape = tuple(data_shape) if data_shape is not None else (3, oc.image_size, oc.image_size)
        chosen = sde or make_sde(oc.sde, sigma_max=oc.sigma_max, num_scales=oc.num_scales)
        return Resolved(oc.preset, shape, chosen, {**oc.overrides, **overrides}, oc)
    if name in PRESETS:
        if data_shape is None or sde is None:
            raise OfficialCheckpointError(
                f"preset '{name}' does not fix the image size and SDE: pass data_shape and sde "
                "(--image-size/--channels and --sde on the command line) or name an official "
                "config"
            )
        return Resolved(name, tuple(data_shape), sde, dict(overrides), None)
    raise OfficialCheckpointError(
        f"unknown config '{config}'; official configs: {', '.join(sorted(OFFICIAL_CONFIGS))}; "
        f"presets: {', '.join(sorted(PRESETS))}"
    )


def read_official_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """Read a score_sde_pytorch checkpoint; refuse full unpickling unless it is trusted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_checkpoint:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise OfficialCheckpointError(
                f"{path} holds more than tensors and plain containers, so it cannot be read with "
                f"torch.load(weights_only=True) ({first}). Unpickling it fully would run whatever "
                "code the file carries. If you trust its origin (e.g. the score_sde_pytorch "
                "release), pass --trust-checkpoint (trust_checkpoint=True)."
            ) from None
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise OfficialCheckpointError(
            f"{path} is not a score_sde_pytorch checkpoint: expected a dict with 'model', 'ema' "
            "and 'step' (the checkpoint_*.pth files of the official repository)"
        )
    return ckpt


def _ema_official_state(
    net: NCSNpp, model_state: dict[str, Tensor], shadow: Sequence[Tensor]
) -> dict[str, Tensor]:
    """The official ``model`` state with the trainable tensors replaced by the EMA shadow list.

    ``shadow_params[i]`` belongs to the i-th trainable parameter in registration order; our key
    map lists keys in that order, and the frozen Fourier ``W`` is skipped as in the official EMA.
    """
    frozen = {name for name, p in net.named_parameters() if not p.requires_grad}
    trainable = [off for ours, (off, _) in official_key_map(net).items() if ours not in frozen]
    if len(shadow) != len(trainable):
        raise OfficialCheckpointError(
            f"the checkpoint's EMA holds {len(shadow)} tensors but this network has "
            f"{len(trainable)} trainable parameters: is the config right?"
        )
    state = {k.removeprefix("module."): v for k, v in model_state.items()}
    state.update(zip(trainable, shadow, strict=True))
    return state


@dataclass
class OfficialWeights:
    """Weights of one official checkpoint mapped onto our network, plus what built it."""

    resolved: Resolved
    raw: dict[str, Tensor]
    ema: dict[str, Tensor] | None
    step: int


def read_official_weights(
    path: str | Path,
    config: str,
    *,
    data_shape: Sequence[int] | None = None,
    sde: SDE | None = None,
    trust_checkpoint: bool = False,
    **overrides: Any,
) -> OfficialWeights:
    """Map the raw and (when present) EMA weights of an official checkpoint onto our keys."""
    resolved = resolve_config(config, data_shape, sde, **overrides)
    ckpt = read_official_checkpoint(path, trust_checkpoint)
    with torch.device("meta"):  # only the key layout is needed here, not initial weights
        net = build_ncsnpp(resolved.preset, resolved.data_shape, resolved.sde, **resolved.overrides)
    try:
        raw = from_official_state_dict(net, ckpt["model"])
        ema = None
        shadow = (ckpt.get("ema") or {}).get("shadow_params")
        if shadow:
            ema = from_official_state_dict(net, _ema_official_state(net, ckpt["model"], shadow))
    except ValueError as err:
        raise OfficialCheckpointError(f"{path} as '{config}': {err}") from None
    step = ckpt.get("step", 0)
    return OfficialWeights(resolved, raw, ema, int(step))


def load_official_checkpoint(
    path: str | Path,
    config: str,
    *,
    data_shape: Sequence[int] | None = None,
    sde: SDE | None = None,
    trust_checkpoint: bool = False,
    use_ema: bool = True,
    **overrides: Any,
) -> tuple[ScoreModel, SDE]:
    """A ready score model (eval mode) and its SDE from an official ``checkpoint_*.pth``.

    ``config`` is an official config name (``ve/cifar10_ncsnpp_continuous``; see
    ``OFFICIAL_CONFIGS``) or one of our presets together with ``data_shape`` and ``sde``.
    The resulting ``score_fn(x, t)`` equals the official ``get_score_fn(sde, model,
    continuous=True)``: VE networks divide by sigma themselves; VP / sub-VP outputs are turned
    into -out / std by :class:`ScoreModel`.
    """
    weights = read_official_weights(
        path, config, data_shape=data_shape, sde=sde, trust_checkpoint=trust_checkpoint, **overrides
    )
    if use_ema and weights.ema is None:
        raise OfficialCheckpointError(
            f"{path} has no EMA weights ('ema.shadow_params'): pass use_ema=False for the raw ones"
        )
    r = weights.resolved
    net = build_ncsnpp(r.preset, r.data_shape, r.sde, **r.overrides)
    net.load_state_dict(weights.ema if use_ema else weights.raw)
    return ScoreModel(net, r.sde).eval(), r.sde
