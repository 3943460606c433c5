"""``lscore sample CKPT --out DIR``: samples as ``.npz`` (uint8 NHWC, ``arr_0``) and a PNG grid.

Sampler settings default to the checkpoint's ``sampling`` config; every field of
the ``sampling`` section can be overridden by its flag (``--steps 50``,
``--sampler heun``, ``--no-denoise`` ...). With ``--world-size W`` each of W processes (``--rank``)
writes its own share, ``samples_rank{r}.npz``, with noise streams that never overlap. Existing
outputs are kept unless ``--overwrite`` is given (``lightning_score.outputs``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lightning_score.commands.options import finite, number
from lightning_score.config import SamplingConfig
from lightning_score.outputs import add_overwrite_argument, atomic_path, check_outputs, write_text

if TYPE_CHECKING:
    import torch

    from lightning_score.training.checkpoint import LoadedModel

#: Help per SamplingConfig field. The name lists are kept here, not imported from the sampler
#: registries, so that `--help` answers without importing torch; a test checks they are complete.
SAMPLING_HELP = {
    "sampler": "pc, ode, euler, heun, dpmpp_2m, edm, ddim, euler_ancestral, dpmpp_2m_sde, "
    "dpmpp_3m, dpmpp_3m_sde, unipc, deis or restart",
    "predictor": "PC predictor: euler_maruyama, reverse_diffusion, ancestral_sampling or none",
    "corrector": "PC corrector: langevin, ald or none",
    "snr": "Langevin corrector's signal-to-noise ratio (sets its step size)",
    "corrector_steps": "corrector steps per PC step",
    "steps": "sampler steps; NFE per step: 1 for euler, dpmpp_2m and a PC predictor (plus "
    "corrector_steps with a corrector) and the grid solvers, 2 for heun, edm and restart",
    "eps": "time where sampling ends (default: the SDE's)",
    "denoise": "final denoising step (Tweedie)",
    "schedule": "fixed-step time grid: uniform, log_sigma, edm or auto (the SDE's default)",
    "rho": "exponent of the edm grid",
    "rtol": "ode: relative tolerance",
    "atol": "ode: absolute tolerance",
    "method": "ode: adaptive torchdiffeq method (dopri5, dopri8, bosh3, fehlberg2, adaptive_heun)",
    "s_churn": "edm: churn (stochasticity) of EDM's sampler",
    "s_tmin": "edm: lowest sigma that gets churn",
    "s_tmax": "edm: highest sigma that gets churn",
    "s_noise": "edm: noise inflation of the churn",
    "eta": "ddim, euler_ancestral, dpmpp_*_sde: noise (default 0 for ddim, 1 for the others)",
    "order": "unipc, deis: order 2 or 3",
    "variant": "unipc: B(h) bh1 or bh2",
    "restart_sigma_min": "restart: restart from the first grid sigma at or below this",
    "restart_sigma_max": "restart: sigma the state is pushed back up to",
    "restart_steps": "restart: Heun steps from restart_sigma_max back down",
    "restart_repeats": "restart: restarts (K)",
}
DEVICE_HELP = (
    "cpu, cuda, cuda:1 ... (default: the GPU if there is one: cuda:LOCAL_RANK under a launcher "
    "that sets LOCAL_RANK, such as torchrun; else the CPU)"
)


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per SamplingConfig field, defaulting to "keep the checkpoint's value"."""
    group = parser.add_argument_group("sampler (every default: the checkpoint's sampling config)")
    for f in dataclasses.fields(SamplingConfig):
        help_text = SAMPLING_HELP.get(f.name, f.name.replace("_", " "))
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if isinstance(default, bool):
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            kind = type(default) if isinstance(default, (int, str)) else finite  # eps: float | None
            if f.name == "s_tmax":  # inf: churn at every noise level, EDM's default
                kind = number(float, at_least=0, infinite_ok=True)
            group.add_argument(
                flag, type=kind, default=None, metavar=f.name.upper(), help=help_text
            )


def sampling_from_args(base: SamplingConfig, args: argparse.Namespace) -> SamplingConfig:
    """``base`` with the flags the user gave; non-PC samplers drop an inherited corrector."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(SamplingConfig)
        if getattr(args, f.name) is not None
    }
    cfg = dataclasses.replace(base, **given)
    if cfg.sampler != "pc" and "corrector" not in given:
        cfg = dataclasses.replace(cfg, corrector="none")
    return cfg


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        help="a training checkpoint (.ckpt) written by `lscore train`, or an export folder "
        "(`lscore export --format safetensors`)",
    )
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="EMA weights (--no-ema: the raw ones)",
    )
    parser.add_argument("--device", default=None, help=DEVICE_HELP)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="base seed; batch b of rank r uses batch_seed(seed, r, b)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="samples per sampler batch")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bars (in a log file: a line every 30 s)",
    )


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """Sampling speed options, applied by :func:`lightning_score.training.speed.for_sampling`."""
    group = parser.add_argument_group("speed")
    group.add_argument(
        "--compile",
        choices=["none", "default", "reduce-overhead", "max-autotune"],
        default="none",
        help="torch.compile the network (reduce-overhead: with CUDA graphs); the first batch "
        "compiles",
    )
    group.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="run the network under bfloat16 autocast (the sampler itself stays float32)",
    )


def resolve_device(name: str | None) -> torch.device:
    """``--device`` (default: the GPU when there is one), refused in one line when this machine
    has no such device: a device problem must not surface as a broken checkpoint. A launcher
    that starts one process per GPU (torchrun, SLURM) sets LOCAL_RANK: then the default and a
    bare ``cuda`` mean ``cuda:LOCAL_RANK``, so that each rank of a sharded run takes its own GPU."""
    import torch

    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    from lightning_score.config import launcher_int

    if name == "cuda" and os.environ.get("LOCAL_RANK"):
        name = f"cuda:{launcher_int('LOCAL_RANK', 0)}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"--device {name} is not a device: use cpu, cuda, cuda:1, mps ..."
        ) from None
    if device.type == "meta":
        raise ValueError(f"--device {name} holds shapes only, no numbers: use cpu or cuda")
    backend = getattr(torch, device.type, None) if device.type not in ("cpu", "cuda") else None
    if device.type not in ("cpu", "cuda", "mps") and not (
        backend is not None and hasattr(backend, "is_available") and backend.is_available()
    ):
        raise ValueError(
            f"--device {name}: {device.type.upper()} is not available on this machine; use cpu"
        )
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: CUDA is not available on this machine; use cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine; use cpu")
    return device


def check_positive(flag: str, value: int | None, what: str = "") -> None:
    """One-line refusal of a count or size below 1 (``None``: the flag's default applies)."""
    if value is not None and value < 1:
        raise ValueError(f"{flag} must be {what or 'positive'}, got {value}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--num", type=int, default=64, help="number of samples (over all ranks)")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--rank",
        type=int,
        default=None,
        help="this process's rank in a sharded run (default: $RANK when set, else 0)",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="processes sharing --num, each writing samples_rank{r}.npz (joined by `lscore "
        "merge`; default: $WORLD_SIZE when set, else 1)",
    )
    parser.add_argument("--grid", type=int, default=64, help="samples shown in the grid PNG")
    add_overwrite_argument(parser)
    add_speed_arguments(parser)
    add_sampling_arguments(parser)


def grid_caption(loaded: LoadedModel, sampler: str, nfe: float) -> str:
    """Which weights and sampler made a grid, as training's grids say it: "step 1500, dpmpp_2m,
    21 NFE" (and "raw weights" when not the EMA)."""
    parts = [] if loaded.step is None else [f"step {loaded.step}"]
    parts += [] if loaded.ema else ["raw weights"]
    return ", ".join([*parts, sampler, f"{nfe:g} NFE"])


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from lightning_score.config import launcher_int
    from lightning_score.data import data_examples, data_shape
    from lightning_score.images import save_grid, to_data_space, to_uint8_nhwc
    from lightning_score.sampling.generate import generate, rank_share
    from lightning_score.training.checkpoint import load_model
    from lightning_score.training.speed import for_sampling

    if args.world_size is None:
        args.world_size = launcher_int("WORLD_SIZE", 1)
    if args.rank is None:
        args.rank = launcher_int("RANK", 0)
    check_positive("--world-size", args.world_size)
    if not 0 <= args.rank < args.world_size:
        raise ValueError(f"--rank must lie in [0, --world-size={args.world_size}), got {args.rank}")
    check_positive("--num", args.num)
    check_positive("--batch-size", args.batch_size)
    check_positive("--grid", args.grid, "a positive number of samples")
    device = resolve_device(args.device)
    stem = "samples" if args.world_size == 1 else f"samples_rank{args.rank:02d}"
    paths = [args.out / f"{stem}{ending}" for ending in (".npz", "_grid.png", ".json")]
    check_outputs(paths, args.overwrite, inputs=[Path(args.checkpoint)])
    loaded = load_model(args.checkpoint, ema=args.ema, map_location=device)
    model, exp = for_sampling(loaded.model, args.compile, args.bf16), loaded.config
    cfg = sampling_from_args(exp.sampling, args)
    share = rank_share(args.num, args.rank, args.world_size)
    shape = data_shape(exp.data)
    result = generate(
        model,
        model.sde,
        shape,
        cfg,
        num=share,
        batch_size=args.batch_size,
        seed=args.seed,
        rank=args.rank,
        device=device,
        progress=args.progress,
        desc=f"sampling ({cfg.sampler}, rank {args.rank})" if args.world_size > 1 else None,
    )
    samples = to_data_space(model.sde, result.samples)
    array = to_uint8_nhwc(samples) if samples.dim() == 4 else samples.float().numpy()
    npz_path, grid_path, json_path = paths
    with atomic_path(npz_path) as tmp:
        np.savez(tmp, array)
    # 2-D points: every sample over as many data points; images: the first --grid ones
    overlay = data_examples(exp.data, exp.seed, len(samples)) if samples.dim() == 2 else None
    shown = samples if overlay is not None else samples[: args.grid]
    with atomic_path(grid_path) as tmp:
        save_grid(shown, tmp, grid_caption(loaded, cfg.sampler, result.nfe), overlay)
    meta = {
        **loaded.record(),
        "compile": args.compile,
        "bf16": args.bf16,
        "num": share,
        "seed": args.seed,
        "rank": args.rank,
        "world_size": args.world_size,
        "nfe": result.nfe,
        "seconds": result.seconds,
        "sampling": dataclasses.asdict(cfg),
    }
    write_text(json_path, json.dumps(meta, indent=2))
    print(
        f"{share} samples, {result.nfe:g} NFE per batch, {result.seconds:.1f} s "
        f"({share / result.seconds:.2f} samples/s) -> {args.out / stem}.npz"
    )
    return 0
