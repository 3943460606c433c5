"""diffusers ``UNet2DModel``s as score models, and the scheduler of each formulation, both ways.

A diffusers model is a UNet2DModel plus a scheduler config, and the scheduler says which of our
rows (``lightning_score.parameterization``) the UNet was trained under:

| scheduler | our SDE | row | UNet2DModel is called with | and returns |
| --- | --- | --- | --- | --- |
| ``ScoreSdeVeScheduler`` (google/ncsnpp-*) | VE, sigma_min/max, N | ``ve`` | sigma (Fourier of its log) | the score (it divides by sigma) |
| ``DDPMScheduler`` / ``DDIMScheduler``, linear betas, epsilon (google/ddpm-*) | VP, beta_min/max = N beta_start/end | ``vp`` | the DDPM timestep (N - 1) t | the noise z |
| ``EDMEulerScheduler`` (epsilon) | EDM, sigma_min/max | ``edm`` | ln(sigma) / 4 | EDM's F (the scheduler preconditions) |

The VP row is Song et al.'s: DDPM's betas beta_i = beta_start + i (beta_end - beta_start) / (N - 1)
are the VP SDE's beta(t) / N on the grid t_i = i / (N - 1), so continuous time t is the DDPM index
(N - 1) t and DDPM's alphas_cumprod approximate the SDE's alpha(t)^2 there to O(1 / N).
``DiffusersUNet`` hands the UNet exp(c_noise) (the Fourier case) or c_noise, so every network here
returns the raw F of its row and the parameterization does the rest.

Both on-disk layouts load: the model repository layout (``config.json`` and
``scheduler_config.json`` side by side) and the pipeline layout (``unet/`` and ``scheduler/``).
A hub id works where the hub can be reached; here only local directories do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import DDPMScheduler, UNet2DModel

from lightning_score.config import ExperimentConfig
from lightning_score.nets.score import ScoreModel
from lightning_score.nets.unet import DiffusersUNet
from lightning_score.parameterization import build_parameterization
from lightning_score.sde import SDE

#: the file name (without suffix) under which diffusers saves a model's weights
WEIGHTS_NAME = "diffusion_pytorch_model"

#: UNet2DModel config entries that describe the file, not the network
_FILE_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


@dataclass(frozen=True)
class SchedulerRow:
    """One diffusers scheduler as one of our (SDE, parameterization) pairs, in both directions."""

    scheduler: str  # diffusers class name
    pipeline: str | None  # the diffusers pipeline pairing UNet2DModel with it, if there is one
    sde: str  # our sde.name
    parameterization: str
    embedding: str  # the UNet2DModel time_embedding_type the row needs
    #: scheduler config -> our config entries (``sde.*``, ``model.sigma_data``); raises if inexact
    to_config: Callable[[dict[str, Any]], dict[str, Any]]
    #: our config -> the scheduler's config
    from_config: Callable[[ExperimentConfig], dict[str, Any]]


def _require(ok: bool, scheduler: str, why: str) -> None:
    if not ok:
        raise ValueError(f"{scheduler} with {why} has no score-SDE counterpart here")


def _ve_entries(c: dict[str, Any]) -> dict[str, Any]:
    n = c.get("num_train_timesteps", 2000)
    return {"sde.sigma_min": c["sigma_min"], "sde.sigma_max": c["sigma_max"], "sde.N": n}


def _ve_scheduler(cfg: ExperimentConfig) -> dict[str, Any]:
    s = cfg.sde
    eps = cfg.sampling.eps if cfg.sampling.eps is not None else 1e-5
    return {
        "num_train_timesteps": s.N,
        "sigma_min": s.sigma_min,
        "sigma_max": s.sigma_max,
        "snr": cfg.sampling.snr,
        "sampling_eps": eps,
    }


def _vp_entries(c: dict[str, Any]) -> dict[str, Any]:
    name = c.get("_class_name", "DDPMScheduler")
    _require(c.get("trained_betas") is None, name, "trained_betas")
    schedule = c.get("beta_schedule", "linear")
    _require(schedule == "linear", name, f"beta_schedule='{schedule}' (the VP SDE is linear)")
    pred = c.get("prediction_type", "epsilon")
    _require(pred == "epsilon", name, f"prediction_type='{pred}' (the vp row predicts epsilon)")
    n = int(c.get("num_train_timesteps", 1000))
    start, end = c.get("beta_start", 1e-4), c.get("beta_end", 0.02)
    return {"sde.beta_min": n * start, "sde.beta_max": n * end, "sde.N": n}


def _ddpm_scheduler(cfg: ExperimentConfig) -> dict[str, Any]:
    s = cfg.sde
    return {
        "num_train_timesteps": s.N,
        "beta_start": s.beta_min / s.N,
        "beta_end": s.beta_max / s.N,
        "beta_schedule": "linear",
        "prediction_type": "epsilon",
    }


def _edm_entries(c: dict[str, Any]) -> dict[str, Any]:
    pred = c.get("prediction_type", "epsilon")
    _require(pred == "epsilon", "EDMEulerScheduler", f"prediction_type='{pred}'")
    return {
        "sde.sigma_min": c.get("sigma_min", 0.002),
        "sde.sigma_max": c.get("sigma_max", 80.0),
        "sde.N": c.get("num_train_timesteps", 1000),
        "model.sigma_data": c.get("sigma_data", 0.5),
    }


def _edm_scheduler(cfg: ExperimentConfig) -> dict[str, Any]:
    s = cfg.sde
    return {
        "sigma_min": s.sigma_min,
        "sigma_max": s.sigma_max,
        "sigma_data": cfg.model.sigma_data,
        "num_train_timesteps": s.N,
        "prediction_type": "epsilon",
        "rho": cfg.sampling.rho,
    }


_VP = {"sde": "vpsde", "parameterization": "vp", "embedding": "positional"}
SCHEDULER_ROWS: dict[str, SchedulerRow] = {
    row.scheduler: row
    for row in (
        SchedulerRow("ScoreSdeVeScheduler", "ScoreSdeVePipeline", "vesde", "ve", "fourier",
                     _ve_entries, _ve_scheduler),
        SchedulerRow("DDPMScheduler", "DDPMPipeline", **_VP, to_config=_vp_entries,
                     from_config=_ddpm_scheduler),
        SchedulerRow("DDIMScheduler", "DDIMPipeline", **_VP, to_config=_vp_entries,
                     from_config=_ddpm_scheduler),
        SchedulerRow("EDMEulerScheduler", None, "edm", "edm", "positional", _edm_entries,
                     _edm_scheduler),
    )
}  # fmt: skip
#: the scheduler each of our (sde.name, parameterization) pairs exports with; sub-VP has none
#: (its std 1 - e^{-B} is no DDPM schedule), nor do the rows on other SDEs
EXPORT_ROWS = {
    (r.sde, r.parameterization): r
    for r in (
        SCHEDULER_ROWS[n] for n in ("ScoreSdeVeScheduler", "DDPMScheduler", "EDMEulerScheduler")
    )
}


def _local_subfolder(root: Path, filename: str, folder: str) -> str | None:
    """Where ``filename`` lies under ``root``: "" (the root), ``folder``, or None (absent)."""
    for sub in ("", folder):
        if (root / sub / filename).is_file():
            return sub
    return None


def scheduler_config(source: str | Path) -> dict[str, Any] | None:
    """The scheduler config next to the UNet (either layout), or None when there is none."""
    if Path(source).is_dir():
        sub = _local_subfolder(Path(source), "scheduler_config.json", "scheduler")
        return None if sub is None else _read_json(Path(source) / sub / "scheduler_config.json")
    for sub in ("", "scheduler"):
        try:
            # any scheduler class reads any scheduler_config.json; _class_name says whose it is
            return dict(DDPMScheduler.load_config(str(source), subfolder=sub or None))
        except OSError:
            continue
    return None


def load_diffusers_unet(source: str | Path) -> UNet2DModel:
    """``UNet2DModel.from_pretrained`` for a local directory (either layout) or a hub id."""
    if Path(source).is_dir():
        sub = _local_subfolder(Path(source), "config.json", "unet")
        if sub is None:
            raise FileNotFoundError(
                f"{source} holds no UNet2DModel: expected config.json at its root or in unet/ "
                "(the layouts save_pretrained writes)"
            )
        check_local_unet(Path(source) / sub)
        try:  # safetensors only: a pickled .bin is never opened, since unpickling can run code
            return UNet2DModel.from_pretrained(
                str(source), subfolder=sub or None, use_safetensors=True
            )
        except (OSError, RuntimeError, ValueError) as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()] or ["?"]
            mismatch = next((line for line in lines if "size mismatch" in line), None)
            if mismatch is None:
                raise ValueError(
                    f"diffusers cannot load {Path(source) / sub}: {lines[0]}"
                ) from None
            raise ValueError(
                f"the weights in {Path(source) / sub} do not fit its config.json ({mismatch}): "
                "the config was edited or belongs to another model; download the folder again"
            ) from None
    try:
        return UNet2DModel.from_pretrained(str(source))
    except OSError as root_error:  # a pipeline repository keeps the UNet in unet/
        try:
            return UNet2DModel.from_pretrained(str(source), subfolder="unet")
        except OSError:
            raise root_error from None


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or one line that names the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}): download or restore that file again"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a JSON object of settings")
    return data


def check_local_unet(folder: Path) -> None:
    """Refuse, in one line each, a UNet folder whose config.json is not JSON or whose weights
    are missing, pickled or truncated, before diffusers reads it."""
    from safetensors import SafetensorError, safe_open

    _read_json(folder / "config.json")
    weights = folder / f"{WEIGHTS_NAME}.safetensors"
    if (folder / f"{WEIGHTS_NAME}.safetensors.index.json").is_file():
        return  # sharded weights: diffusers checks that every shard is there
    if not weights.is_file():
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        if pickled:
            raise ValueError(
                f"{folder} holds pickled weights only ({', '.join(pickled)}), which lscore never "
                "opens (unpickling can run code): where you trust the file, re-save it with "
                "UNet2DModel.from_pretrained(...).save_pretrained(..., safe_serialization=True)"
            )
        raise FileNotFoundError(
            f"{folder} has no {weights.name}: the weights are missing; download the folder again"
        )
    try:
        with safe_open(weights, framework="pt"):  # checks the header against the file's size
            pass
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights} is truncated or damaged ({err}): download it again") from None


def _row_of(source: str | Path, unet: UNet2DModel, sched: dict[str, Any] | None) -> SchedulerRow:
    embedding = unet.config.time_embedding_type
    if sched is None:  # no scheduler: the UNet's embedding names the family
        fallback = {"fourier": "ScoreSdeVeScheduler", "positional": "DDPMScheduler"}
        if embedding not in fallback:
            raise ValueError(f"{source}: no scheduler config and a '{embedding}' time embedding")
        return SCHEDULER_ROWS[fallback[embedding]]
    name = sched.get("_class_name", "")
    if name not in SCHEDULER_ROWS:
        raise ValueError(
            f"{source}: scheduler {name or '(unnamed)'} has no score-SDE counterpart here; "
            f"supported: {', '.join(SCHEDULER_ROWS)}"
        )
    row = SCHEDULER_ROWS[name]
    if embedding != row.embedding:
        raise ValueError(
            f"{source}: UNet2DModel has time_embedding_type='{embedding}', but {name} models "
            f"({row.parameterization} row) are conditioned with '{row.embedding}'"
        )
    return row


def diffusers_entries(
    source: str | Path, unet: UNet2DModel, overrides: dict[str, Any] | None = None
) -> tuple[SchedulerRow, dict[str, Any]]:
    """The row of a diffusers model and our ``sde.*`` / ``model.*`` entries for it.

    The entries come from the accompanying scheduler config; ``overrides`` (dotted keys, None
    values ignored) replace them and are required where there is no scheduler config.
    """
    sched = scheduler_config(source)
    row = _row_of(source, unet, sched)
    entries = row.to_config(sched) if sched is not None else {}
    entries.update({k: v for k, v in (overrides or {}).items() if v is not None})
    needed = {
        "vesde": ("sde.sigma_min", "sde.sigma_max"),
        "vpsde": ("sde.beta_min", "sde.beta_max"),
    }.get(row.sde, ())
    missing = [k for k in needed if k not in entries]
    if missing:
        raise ValueError(
            f"{source} has no scheduler config (scheduler_config.json) to read the noise range "
            f"from: pass {' and '.join(k.removeprefix('sde.') for k in missing)} "
            "(e.g. sigma_min 0.01 and sigma_max 348 for CelebA-HQ 256; beta_min 0.1 and "
            "beta_max 20 for DDPM's linear betas 1e-4..0.02 over 1000 steps)"
        )
    return row, {"sde.name": row.sde, "model.parameterization": row.parameterization, **entries}


def unet_kwargs(unet: UNet2DModel) -> dict[str, Any]:
    """The UNet2DModel config as the keyword arguments of the ``diffusers`` network."""
    return {k: v for k, v in dict(unet.config).items() if k not in _FILE_KEYS}


def _sde_from_entries(entries: dict[str, Any]) -> SDE:
    from lightning_score.config import SDEConfig
    from lightning_score.sde import build_sde, validate_sde_config

    cfg = SDEConfig(
        name=entries["sde.name"],
        **{
            k.removeprefix("sde."): v
            for k, v in entries.items()
            if k.startswith("sde.") and k != "sde.name"
        },
    )
    validate_sde_config(cfg)  # a ConfigError is a ValueError: one line for the user
    return build_sde(cfg)


def load_diffusers_score_model(
    source: str | Path,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    beta_min: float | None = None,
    beta_max: float | None = None,
    num_scales: int | None = None,
) -> tuple[ScoreModel, SDE]:
    """A score model (eval mode) and its SDE from a diffusers ``UNet2DModel`` and its scheduler.

    The noise range comes from the scheduler config (see the module table); the arguments
    override it and are required when there is no scheduler config (a Fourier-embedded UNet is
    then a VE model, a positional one a DDPM / VP model).
    """
    unet = load_diffusers_unet(source)
    given = {
        "sde.sigma_min": sigma_min,
        "sde.sigma_max": sigma_max,
        "sde.beta_min": beta_min,
        "sde.beta_max": beta_max,
        "sde.N": num_scales,
    }
    row, entries = diffusers_entries(source, unet, given)
    sde = _sde_from_entries(entries)
    param = build_parameterization(
        row.parameterization, sde, float(entries.get("model.sigma_data", 0.5))
    )
    return ScoreModel(DiffusersUNet(unet), param).eval(), sde


__all__ = [
    "EXPORT_ROWS",
    "SCHEDULER_ROWS",
    "SchedulerRow",
    "diffusers_entries",
    "load_diffusers_score_model",
    "load_diffusers_unet",
    "scheduler_config",
    "unet_kwargs",
]
