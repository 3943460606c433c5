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
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_score.config import ExperimentConfig
from lightning_score.experiment import build_score_model, load_config
from lightning_score.nets.ncsnpp import NCSNpp
from lightning_score.nets.official_layout import from_official_state_dict, official_key_map
from lightning_score.nets.score import ScoreModel
from lightning_score.sde import SDE

#: our paper configs, which describe the official runs (read from the repository's configs/)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class OfficialCheckpointError(ValueError):
    """An official checkpoint that cannot be read or does not fit the requested network."""


@dataclass(frozen=True)
class OfficialConfig:
    """An official score_sde_pytorch config file as one of our configs plus overrides."""

    yaml: str
    overrides: tuple[str, ...] = ()


def _deep(yaml: str, preset: str) -> OfficialConfig:
    return OfficialConfig(yaml, (f"model.name={preset}",))


OFFICIAL_CONFIGS: dict[str, OfficialConfig] = {
    # CIFAR-10, continuous time (configs/{ve,vp,subvp}/cifar10_*_continuous.py)
    "ve/cifar10_ncsnpp_continuous": OfficialConfig("cifar10_ncsnpp_ve.yaml"),
    "ve/cifar10_ncsnpp_deep_continuous": _deep("cifar10_ncsnpp_ve.yaml", "ncsnpp_cifar10_deep"),
    "vp/cifar10_ddpmpp_continuous": OfficialConfig("cifar10_ddpmpp_vp.yaml"),
    "vp/cifar10_ddpmpp_deep_continuous": _deep("cifar10_ddpmpp_vp.yaml", "ddpmpp_cifar10_deep"),
    "subvp/cifar10_ddpmpp_continuous": OfficialConfig("cifar10_ddpmpp_subvp.yaml"),
    "subvp/cifar10_ddpmpp_deep_continuous": _deep(
        "cifar10_ddpmpp_subvp.yaml", "ddpmpp_cifar10_deep"
    ),
    # NCSN++ trained on VP / sub-VP (positional embedding: the VP row's own)
    "vp/cifar10_ncsnpp_continuous": _deep("cifar10_ddpmpp_vp.yaml", "ncsnpp_cifar10"),
    "vp/cifar10_ncsnpp_deep_continuous": _deep("cifar10_ddpmpp_vp.yaml", "ncsnpp_cifar10_deep"),
    "subvp/cifar10_ncsnpp_continuous": _deep("cifar10_ddpmpp_subvp.yaml", "ncsnpp_cifar10"),
    "subvp/cifar10_ncsnpp_deep_continuous": _deep(
        "cifar10_ddpmpp_subvp.yaml", "ncsnpp_cifar10_deep"
    ),
    # 256 px (configs/ve/*_256_ncsnpp_continuous.py, LSUN church / bedroom)
    "ve/celebahq_256_ncsnpp_continuous": OfficialConfig("celebahq256_ncsnpp_ve.yaml"),
    "ve/ffhq_256_ncsnpp_continuous": OfficialConfig(
        "celebahq256_ncsnpp_ve.yaml", ("name=ffhq256_ncsnpp_ve", "data.root=data/ffhq256")
    ),
    "ve/church_ncsnpp_continuous": OfficialConfig("church256_ncsnpp_ve.yaml"),
    "ve/bedroom_ncsnpp_continuous": OfficialConfig("lsun256_ncsnpp_ve.yaml"),
    # 1024 px (configs/ve/{celebahq,ffhq}_ncsnpp_continuous.py)
    "ve/celebahq_ncsnpp_continuous": OfficialConfig("celebahq1024_ncsnpp_ve.yaml"),
    "ve/ffhq_ncsnpp_continuous": OfficialConfig(
        "celebahq1024_ncsnpp_ve.yaml",
        ("name=ffhq1024_ncsnpp_ve", "data.root=data/ffhq1024", "loss.reduce=mean"),
    ),
}

#: for a bare network preset (``--config ncsnpp_tiny --sde vesde``): the paper config whose
#: training and sampling settings go with each SDE
PAPER_CONFIG_OF_SDE = {
    "vesde": "cifar10_ncsnpp_ve.yaml",
    "vpsde": "cifar10_ddpmpp_vp.yaml",
    "subvpsde": "cifar10_ddpmpp_subvp.yaml",
    "edm": "base/edm.yaml",
}


def _normalize_name(config: str) -> str:
    """Accept 'configs/ve/x.py', 've/x.py' and 've/x' for the official config files."""
    return config.removeprefix("configs/").removesuffix(".py")


def _our_config(yaml: str, overrides: Sequence[str]) -> ExperimentConfig:
    path = CONFIG_DIR / yaml
    if not path.is_file():
        raise OfficialCheckpointError(
            f"{path} not found: official configs are described by the repository's configs/ "
            "directory; run from a checkout of lightning-score (pip install -e .)"
        )
    return load_config(path, list(overrides))


def official_experiment(
    config: str,
    *,
    data_shape: Sequence[int] | None = None,
    sde_overrides: Sequence[str] = (),
    model_kwargs: dict[str, Any] | None = None,
) -> ExperimentConfig:
    """The experiment config that rebuilds an official model: an official config name
    (``ve/cifar10_ncsnpp_continuous``), or one of our NCSN++ presets with ``data_shape`` and
    ``sde_overrides`` (``sde.name=vesde`` ...), which nothing else fixes for a preset."""
    from lightning_score.nets.ncsnpp import PRESETS

    name = _normalize_name(config)
    kwargs = [
        f"model.kwargs.{k}={list(v) if isinstance(v, tuple) else v}"
        for k, v in (model_kwargs or {}).items()
    ]
    size = [] if data_shape is None else [f"data.image_size={data_shape[-1]}"]
    if name in OFFICIAL_CONFIGS:
        oc = OFFICIAL_CONFIGS[name]
        return _our_config(oc.yaml, [*oc.overrides, *size, *kwargs])
    if name not in PRESETS:
        raise OfficialCheckpointError(
            f"unknown config '{config}'; official configs: {', '.join(sorted(OFFICIAL_CONFIGS))}; "
            f"presets: {', '.join(sorted(PRESETS))}"
        )
    sde = next((o.partition("=")[2] for o in sde_overrides if o.startswith("sde.name=")), None)
    if data_shape is None or sde is None:
        raise OfficialCheckpointError(
            f"preset '{name}' does not fix the image size and SDE: pass data_shape and sde.name "
            "(--image-size/--channels and --sde on the command line) or name an official config"
        )
    channels = data_shape[0]
    if channels not in (1, 3):
        raise OfficialCheckpointError(
            f"no data set of this project yields {channels}-channel images; use 3 (or 1) channels"
        )
    data = ["data.name=folder"] if channels == 3 else ["data.name=fashion_mnist"]
    overrides = [
        f"name=official-{name}",
        f"model.name={name}",
        *data,
        *size,
        *sde_overrides,
        *kwargs,
    ]
    return _our_config(PAPER_CONFIG_OF_SDE.get(sde, PAPER_CONFIG_OF_SDE["vesde"]), overrides)


def read_official_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """Read a score_sde_pytorch checkpoint; refuse full unpickling unless it is trusted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # text, other formats, truncated copies
        raise OfficialCheckpointError(
            f"{path} is not a checkpoint, or a truncated one: it lacks the zip archive that "
            "torch.save writes (score_sde_pytorch's checkpoint_*.pth files are such archives)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, zipfile.BadZipFile) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OfficialCheckpointError(
            f"{path} is not a checkpoint, or a damaged one ({first})"
        ) from None
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
    """Weights of one official checkpoint mapped onto our network, plus the config that built it."""

    config: ExperimentConfig
    raw: dict[str, Tensor]
    ema: dict[str, Tensor] | None
    step: int


def read_official_weights(
    path: str | Path, config: ExperimentConfig, *, trust_checkpoint: bool = False
) -> OfficialWeights:
    """Map the raw and (when present) EMA weights of an official checkpoint onto the network of
    ``config`` (see :func:`official_experiment`)."""
    ckpt = read_official_checkpoint(path, trust_checkpoint)
    with torch.device("meta"):  # only the key layout is needed here, not initial weights
        net = build_score_model(config).net
    if not isinstance(net, NCSNpp):
        raise OfficialCheckpointError(
            f"model.name={config.model.name} is not an NCSN++ / DDPM++ network: official "
            "checkpoints hold those only"
        )
    try:
        raw = from_official_state_dict(net, ckpt["model"])
        ema = None
        shadow = (ckpt.get("ema") or {}).get("shadow_params")
        if shadow:
            ema = from_official_state_dict(net, _ema_official_state(net, ckpt["model"], shadow))
    except ValueError as err:
        raise OfficialCheckpointError(f"{path} as '{config.name}': {err}") from None
    return OfficialWeights(config, raw, ema, int(ckpt.get("step", 0)))


def load_official_checkpoint(
    path: str | Path,
    config: str,
    *,
    data_shape: Sequence[int] | None = None,
    sde_overrides: Sequence[str] = (),
    trust_checkpoint: bool = False,
    use_ema: bool = True,
    **model_kwargs: Any,
) -> tuple[ScoreModel, SDE]:
    """A ready score model (eval mode) and its SDE from an official ``checkpoint_*.pth``.

    ``config`` is an official config name (``ve/cifar10_ncsnpp_continuous``; see
    ``OFFICIAL_CONFIGS``) or one of our presets together with ``data_shape`` and
    ``sde_overrides``. The resulting ``score_fn(x, t)`` equals the official ``get_score_fn(sde,
    model, continuous=True)``: the parameterization of the config's SDE maps the network output.
    """
    exp = official_experiment(
        config, data_shape=data_shape, sde_overrides=sde_overrides, model_kwargs=model_kwargs
    )
    weights = read_official_weights(path, exp, trust_checkpoint=trust_checkpoint)
    if use_ema and weights.ema is None:
        raise OfficialCheckpointError(
            f"{path} has no EMA weights ('ema.shadow_params'): pass use_ema=False for the raw ones"
        )
    model = build_score_model(exp)
    model.net.load_state_dict(weights.ema if use_ema else weights.raw)
    return model.eval(), model.sde
