"""``lscore convert CHECKPOINT --config NAME [--out PATH]``: score_sde_pytorch weights -> ours.

Writes a lightning-score checkpoint (the layout of ``lightning_score.training.checkpoint``: EMA weights in
``state_dict``, raw ones in ``current_model_state``, the resolved config in
``hyper_parameters.config``), so ``lscore sample`` / ``evaluate`` / ``likelihood`` take it as is.
The output loads with ``torch.load(weights_only=True)``.

``lscore convert DIFFUSERS_DIR --data NAME [--out DIR]``: a diffusers model (UNet2DModel with a
DDPM / DDIM, score-SDE VE or EDM scheduler) -> an export (``model.safetensors`` + config + model
card) that every command takes; ``--data`` names the data set it was trained on.

Neither replaces its input, nor an existing output unless ``--overwrite`` is given; the
checkpoint is written whole or not at all.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_score.commands.options import positive
from lightning_score.outputs import (
    add_overwrite_argument,
    atomic_path,
    check_output_folder,
    check_outputs,
)

if TYPE_CHECKING:
    from lightning_score.interop.official import OfficialWeights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", nargs="?", help="official checkpoint_*.pth file, or a diffusers model folder"
    )
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
    add_overwrite_argument(parser)
    parser.add_argument("--list", action="store_true", help="list the official configs and exit")
    preset = parser.add_argument_group("network preset instead of an official config")
    preset.add_argument("--image-size", type=int, help="image side in pixels")
    preset.add_argument("--channels", type=int, default=3, help="image channels")
    preset.add_argument(
        "--sde", choices=["vesde", "vpsde", "subvpsde", "edm"], help="SDE of the model"
    )
    preset.add_argument(
        "--sigma-min", type=positive, default=None, help="VE / EDM sigma_min (default: the SDE's)"
    )
    preset.add_argument(
        "--sigma-max", type=positive, default=None, help="VE / EDM sigma_max (default: the SDE's)"
    )
    preset.add_argument("--beta-min", type=positive, default=0.1, help="VP / sub-VP beta_min")
    preset.add_argument("--beta-max", type=positive, default=20.0, help="VP / sub-VP beta_max")
    preset.add_argument("--num-scales", type=int, default=1000, help="the SDE's N")
    hub = parser.add_argument_group("diffusers model folder (UNet2DModel + scheduler)")
    hub.add_argument("--data", help="data set it was trained on (data.name, e.g. cifar10)")
    hub.add_argument("--data-root", default=None, help="where that data set lies (data.root)")


def sde_overrides(args: argparse.Namespace) -> list[str]:
    """The ``sde.*`` overrides a preset conversion names on the command line."""
    if args.sde is None:
        return []
    given = {"sigma_min": args.sigma_min, "sigma_max": args.sigma_max}
    ranges = [f"sde.{k}={v}" for k, v in given.items() if v is not None]
    ranges += [f"sde.beta_min={args.beta_min}", f"sde.beta_max={args.beta_max}"]
    return [f"sde.name={args.sde}", *ranges, f"sde.N={args.num_scales}"]


def experiment_config(weights: OfficialWeights, name: str) -> dict[str, Any]:
    """The resolved lightning-score config (as a plain dict) that rebuilds the converted model."""
    from lightning_score.config import to_dict

    cfg = dataclasses.replace(
        weights.config,
        name=f"official-{name.replace('/', '-')}",
        ema=dataclasses.replace(weights.config.ema, enabled=weights.ema is not None),
    )
    return to_dict(cfg)


def convert(weights: OfficialWeights, name: str, source: Path, out: Path) -> Path:
    """Write ``weights`` as a lightning-score checkpoint at ``out``."""
    import torch

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
    with atomic_path(out) as tmp:
        torch.save(ckpt, tmp)
    return out


def convert_diffusers(args: argparse.Namespace) -> int:
    """A diffusers folder -> our safetensors export."""
    if not args.data:  # before torch is imported: the mistake answers at once
        raise ValueError(
            "a diffusers model does not say what it was trained on: pass --data NAME "
            "(e.g. cifar10 for google/ddpm-cifar10-32)"
        )
    from lightning_score.interop.diffusers_models import diffusers_experiment
    from lightning_score.interop.export import Trained, diffusers_provenance, write_safetensors
    from lightning_score.training.checkpoint import score_model_with

    source = Path(args.checkpoint)
    out = Path(args.out) if args.out else source.with_name(source.name + ".lscore")
    check_output_folder(out, args.overwrite, inputs=[source])
    data = [f"data.name={args.data}"] + ([f"data.root={args.data_root}"] if args.data_root else [])
    cfg, state = diffusers_experiment(source, data)
    model = score_model_with(cfg, state, source).eval()
    write_safetensors(Trained(model, cfg, "ema", None, source, diffusers_provenance(source)), out)
    print(f"wrote {out}: {cfg.sde.name} SDE, {cfg.model.parameterization} row, data {args.data}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.checkpoint and Path(args.checkpoint).is_dir():
        return convert_diffusers(args)
    from lightning_score.interop.official import (
        OFFICIAL_CONFIGS,
        official_experiment,
        read_official_weights,
    )
    from lightning_score.nets.ncsnpp import PRESETS
    from lightning_score.progress import progress_bar

    if args.list:
        for name, oc in sorted(OFFICIAL_CONFIGS.items()):
            extra = f" {' '.join(oc.overrides)}" if oc.overrides else ""
            print(f"{name:40s} configs/{oc.yaml}{extra}")
        print(f"presets (with --image-size and --sde): {', '.join(sorted(PRESETS))}")
        return 0
    if not args.checkpoint or not args.config:
        raise ValueError("pass the official checkpoint path and --config (see --list)")
    data_shape = None
    if args.image_size is not None:
        data_shape = (args.channels, args.image_size, args.image_size)
    exp = official_experiment(args.config, data_shape=data_shape, sde_overrides=sde_overrides(args))
    source = Path(args.checkpoint)
    out = Path(args.out) if args.out else source.with_suffix(".lscore.ckpt")
    check_outputs([out], args.overwrite, inputs=[source])
    # two stages of seconds to minutes each for the large networks: read and map, then write
    with progress_bar(total=2, desc=f"converting {source.name}", unit="stage") as bar:
        weights = read_official_weights(source, exp, trust_checkpoint=args.trust_checkpoint)
        bar.update()
        convert(weights, args.config, source, out)
        bar.update()
    kind = "EMA and raw" if weights.ema is not None else "raw (no EMA in the file)"
    print(f"wrote {out}: {exp.model.name}, {kind} weights, step {weights.step}")
    return 0
