"""``lscore convert CHECKPOINT --config NAME [--out PATH]``: score_sde_pytorch weights -> ours.

Writes a lightning-score checkpoint (the layout of ``lightning_score.checkpoint``: EMA weights in
``state_dict``, raw ones in ``current_model_state``, the resolved config in
``hyper_parameters.config``), so ``lscore sample`` / ``evaluate`` / ``likelihood`` take it as is.
The output loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from lightning_score.nets.official import OFFICIAL_CONFIGS, OfficialWeights, make_sde
from lightning_score.sde import SDE, VESDE, VPSDE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", help="official checkpoint_*.pth file")
    parser.add_argument(
        "--config",
        help="official config it was trained with (e.g. ve/cifar10_ncsnpp_continuous, "
        "vp/cifar10_ddpmpp_deep_continuous) or a network preset (then --image-size and --sde)",
    )
    parser.add_argument(
        "--out", help="output checkpoint (default: <checkpoint>.lscore.ckpt beside the input)"
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow a full unpickle when torch.load(weights_only=True) refuses the file; this "
        "runs any code stored in it, so use it only for files from a source you trust",
    )
    parser.add_argument("--list", action="store_true", help="list the official configs and exit")
    preset = parser.add_argument_group("network preset instead of an official config")
    preset.add_argument("--image-size", type=int, help="image side in pixels")
    preset.add_argument("--channels", type=int, default=3, help="image channels (default 3)")
    preset.add_argument("--sde", choices=["vesde", "vpsde", "subvpsde"], help="SDE of the model")
    preset.add_argument("--sigma-min", type=float, default=0.01)
    preset.add_argument("--sigma-max", type=float, default=50.0)
    preset.add_argument("--beta-min", type=float, default=0.1)
    preset.add_argument("--beta-max", type=float, default=20.0)
    preset.add_argument("--num-scales", type=int, default=1000, help="the SDE's N")


def _sde_config(sde: SDE) -> dict[str, Any]:
    if isinstance(sde, VESDE):
        return {
            "name": "vesde",
            "sigma_min": sde.sigma_min,
            "sigma_max": sde.sigma_max,
            "N": sde.N,
        }
    name = "vpsde" if type(sde) is VPSDE else "subvpsde"
    return {"name": name, "beta_min": sde.beta_0, "beta_max": sde.beta_1, "N": sde.N}


def _plain(value: Any) -> Any:
    """Tuples -> lists so the config is plain YAML data."""
    return list(value) if isinstance(value, tuple) else value


def experiment_config(weights: OfficialWeights, name: str) -> dict[str, Any]:
    """The resolved lightning-score config (as a plain dict) that rebuilds the converted model."""
    from lightning_score.config import (
        DataConfig,
        EMAConfig,
        ExperimentConfig,
        ModelConfig,
        SamplingConfig,
        SDEConfig,
        to_dict,
    )
    from lightning_score.data import data_shape

    r = weights.resolved
    oc = r.official
    channels, size = r.data_shape[0], r.data_shape[1]
    data_name = oc.data if oc else ("folder" if channels == 3 else "fashion_mnist")
    data = DataConfig(name=data_name, image_size=size)
    if data_shape(data) != tuple(r.data_shape):
        raise ValueError(
            f"no data set of this project yields {channels}-channel images; "
            "convert with --channels 3 (or 1)"
        )
    ve = isinstance(r.sde, VESDE)
    sampling = SamplingConfig(
        predictor="reverse_diffusion" if ve else "euler_maruyama",
        corrector="langevin" if ve else "none",
        snr=oc.snr if oc else 0.16,
        steps=r.sde.N,
    )
    cfg = ExperimentConfig(
        name=f"official-{name.replace('/', '-')}",
        sde=SDEConfig(**_sde_config(r.sde)),
        model=ModelConfig(name=r.preset, kwargs={k: _plain(v) for k, v in r.overrides.items()}),
        data=data,
        ema=EMAConfig(enabled=weights.ema is not None, decay=oc.ema_decay if oc else 0.999),
        sampling=sampling,
    )
    return to_dict(cfg)


def convert(weights: OfficialWeights, name: str, source: Path, out: Path) -> Path:
    """Write ``weights`` as a lightning-score checkpoint at ``out``."""
    prefix = "score_model.net."
    main = weights.ema if weights.ema is not None else weights.raw
    ckpt: dict[str, Any] = {
        "state_dict": {prefix + k: v.contiguous() for k, v in main.items()},
        "hyper_parameters": {"config": experiment_config(weights, name)},
        "global_step": weights.step,
        "converted_from": {"path": str(source), "config": name, "step": weights.step},
    }
    if weights.ema is not None:
        ckpt["current_model_state"] = {prefix + k: v.contiguous() for k, v in weights.raw.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
    return out


def run(args: argparse.Namespace) -> int:
    from lightning_score.nets.ncsnpp import PRESETS
    from lightning_score.nets.official import read_official_weights

    if args.list:
        for name, oc in sorted(OFFICIAL_CONFIGS.items()):
            print(f"{name:40s} {oc.preset} {oc.image_size}px {oc.sde}")
        print(f"presets (with --image-size and --sde): {', '.join(sorted(PRESETS))}")
        return 0
    if not args.checkpoint or not args.config:
        raise ValueError("pass the official checkpoint path and --config (see --list)")
    data_shape = None
    if args.image_size is not None:
        data_shape = (args.channels, args.image_size, args.image_size)
    sde = None
    if args.sde is not None:
        sde = make_sde(
            args.sde, args.sigma_min, args.sigma_max, args.beta_min, args.beta_max, args.num_scales
        )
    source = Path(args.checkpoint)
    weights = read_official_weights(
        source, args.config, data_shape=data_shape, sde=sde, trust_checkpoint=args.trust_checkpoint
    )
    out = Path(args.out) if args.out else source.with_suffix(".lscore.ckpt")
    convert(weights, args.config, source, out)
    kind = "EMA and raw" if weights.ema is not None else "raw (no EMA in the file)"
    print(f"wrote {out}: {weights.resolved.preset}, {kind} weights, step {weights.step}")
    return 0
