"""Safe checkpoint loading: ``torch.load(weights_only=True)`` and errors that say what to do.

A training checkpoint is Lightning's dict. With EMA on, ``state_dict`` holds the EMA weights and
``current_model_state`` the raw ones (Lightning's ``WeightAveraging`` layout); the resolved config
sits in ``hyper_parameters["config"]`` so that sampling, evaluation and likelihood need only the path.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from lightning_score.config import ExperimentConfig, from_dict
from lightning_score.nets import ScoreModel

MODEL_PREFIX = "score_model."


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or lacks what was asked of it."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass the path of a .ckpt file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt, truncated or not a weights-only checkpoint ({first}); "
            "use an earlier checkpoint of the run (resume=auto picks the newest valid one)"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a lightning-score checkpoint (no 'state_dict' entry)")
    return ckpt


def checkpoint_config(ckpt: dict[str, Any]) -> ExperimentConfig:
    try:
        return from_dict(ckpt["hyper_parameters"]["config"])
    except KeyError:
        raise CheckpointError(
            "checkpoint carries no lightning-score config (hyper_parameters.config): "
            "was it written by `lscore train`?"
        ) from None


def model_state(ckpt: dict[str, Any], ema: bool) -> dict[str, torch.Tensor]:
    """The score model's weights: EMA (``ema=True``) or raw."""
    has_ema = "current_model_state" in ckpt
    if ema and not has_ema:
        raise CheckpointError(
            "EMA weights were asked for but this checkpoint has none (trained with ema.enabled=false): "
            "pass --no-ema to use the raw weights"
        )
    state = ckpt["state_dict"] if ema or not has_ema else ckpt["current_model_state"]
    return {k[len(MODEL_PREFIX) :]: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}


def load_score_model(
    path: str | Path, ema: bool = True, map_location: str | torch.device = "cpu"
) -> tuple[ScoreModel, ExperimentConfig]:
    """Rebuild the score model of a training checkpoint, ready for samplers and metrics."""
    from lightning_score.module import build_score_model

    ckpt = load_checkpoint(path, map_location)
    cfg = checkpoint_config(ckpt)
    model = build_score_model(cfg)
    state = model_state(ckpt, ema)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint {path} does not match its network '{cfg.model.name}': "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return model.to(map_location).eval(), cfg
