"""Use a diffusers score-SDE ``UNet2DModel`` (e.g. ``google/ncsnpp-celebahq-256``) as a score model.

Those repositories hold a VE NCSN++ converted to ``UNet2DModel`` (skip blocks, Fourier embedding
of log sigma) and a ``ScoreSdeVeScheduler`` config with sigma_min / sigma_max / N. The UNet is
called with sigma as its "timestep" and divides its output by sigma itself; ``DiffusersUNet`` undoes
that, so the network returns F = sigma * score like every VE network here (Song's VE row). Data are in [0, 1] as for every VE model here (``center_input_sample`` in the
UNet config maps them to [-1, 1] inside, like the official ``data.centered = False``).

Both on-disk layouts load: the model repository layout (``config.json`` and
``scheduler_config.json`` side by side) and the pipeline layout (``unet/`` and ``scheduler/``).
A hub id works where the hub can be reached; here only local directories do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import ScoreSdeVeScheduler, UNet2DModel

from lightning_score.nets.score import ScoreModel
from lightning_score.nets.unet import DiffusersUNet
from lightning_score.parameterization import VEParameterization
from lightning_score.sde import VESDE

SCHEDULER_CLASS = "ScoreSdeVeScheduler"


def _local_subfolder(root: Path, filename: str, folder: str) -> str | None:
    """Where ``filename`` lies under ``root``: "" (the root), ``folder``, or None (absent)."""
    for sub in ("", folder):
        if (root / sub / filename).is_file():
            return sub
    return None


def _scheduler_config(source: str | Path) -> dict[str, Any] | None:
    """The ScoreSdeVeScheduler config next to the UNet, or None when there is none."""
    if Path(source).is_dir():
        sub = _local_subfolder(Path(source), "scheduler_config.json", "scheduler")
        subs = [] if sub is None else [sub]
    else:
        subs = ["", "scheduler"]
    config = None
    for sub in subs:
        try:
            config = ScoreSdeVeScheduler.load_config(str(source), subfolder=sub or None)
            break
        except OSError:
            continue
    if config is None or config.get("_class_name", SCHEDULER_CLASS) != SCHEDULER_CLASS:
        return None
    return config


def load_diffusers_unet(source: str | Path) -> UNet2DModel:
    """``UNet2DModel.from_pretrained`` for a local directory (either layout) or a hub id."""
    if Path(source).is_dir():
        sub = _local_subfolder(Path(source), "config.json", "unet")
        if sub is None:
            raise FileNotFoundError(
                f"{source} holds no UNet2DModel: expected config.json at its root or in unet/ "
                "(the layouts save_pretrained writes)"
            )
        return UNet2DModel.from_pretrained(str(source), subfolder=sub or None)
    try:
        return UNet2DModel.from_pretrained(str(source))
    except OSError as root_error:  # a pipeline repository keeps the UNet in unet/
        try:
            return UNet2DModel.from_pretrained(str(source), subfolder="unet")
        except OSError:
            raise root_error from None


def load_diffusers_score_model(
    source: str | Path,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    num_scales: int | None = None,
) -> tuple[ScoreModel, VESDE]:
    """A score model (eval mode) and its VE SDE from a diffusers ``UNet2DModel``.

    sigma_min, sigma_max and N come from the accompanying ``ScoreSdeVeScheduler`` config; the
    arguments override them and are required when there is no such config.
    """
    unet = load_diffusers_unet(source)
    if unet.config.time_embedding_type != "fourier":
        raise ValueError(
            f"{source}: UNet2DModel has time_embedding_type='{unet.config.time_embedding_type}'; "
            "only score-SDE VE models (time_embedding_type='fourier', conditioned on sigma) "
            "can be wrapped as VE score models"
        )
    sched = _scheduler_config(source) or {}
    values = {
        "sigma_min": sigma_min if sigma_min is not None else sched.get("sigma_min"),
        "sigma_max": sigma_max if sigma_max is not None else sched.get("sigma_max"),
        "N": num_scales if num_scales is not None else sched.get("num_train_timesteps", 1000),
    }
    if values["sigma_min"] is None or values["sigma_max"] is None:
        raise ValueError(
            f"{source} has no {SCHEDULER_CLASS} config (scheduler_config.json) to read the noise "
            "range from: pass sigma_min and sigma_max (e.g. 0.01 and 348 for CelebA-HQ 256)"
        )
    sde = VESDE(
        sigma_min=float(values["sigma_min"]),
        sigma_max=float(values["sigma_max"]),
        N=int(values["N"]),
    )
    return ScoreModel(DiffusersUNet(unet), VEParameterization(sde)).eval(), sde
