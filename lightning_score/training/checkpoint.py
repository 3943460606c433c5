"""Safe checkpoint loading: ``torch.load(weights_only=True)``, verified checksums, and errors that
say what to do.

A training checkpoint is Lightning's dict. With EMA on, ``state_dict`` holds the EMA weights and
``current_model_state`` the raw ones (Lightning's ``WeightAveraging`` layout); the resolved config
sits in ``hyper_parameters["config"]`` so that sampling, evaluation and likelihood need only the path.

An export (``lscore export --format safetensors``) is a ``model.safetensors`` file holding one set
of weights, with the resolved config and which set it is in the file's metadata: safetensors
holds tensors and strings only, so reading it can never run code. :func:`load_score_model` takes
either.

Checksums: ``torch.save`` writes a zip archive and stores a CRC-32 of every record (the pickle and
each tensor's bytes) in it, but ``torch.load`` never checks them, so bytes damaged on disk or in a
copy load silently as wrong weights. :func:`verify_checkpoint` checks every record against its
stored CRC-32 before a checkpoint is used: nothing is added to the file format, any checkpoint
``torch.save`` wrote is covered, and the cost is one read of the file at memory speed (CRC-32
runs at several GB/s; see ``bench/checkpoint_verify.py``).

:func:`find_resume_checkpoint` picks the checkpoint a preempted run continues from: the one with
the highest step stored inside it that verifies, with the reasons the others were passed over.
File times play no part: a copied or restored run directory has meaningless ones.

Provenance: :func:`weights_digest` is a SHA-256 of the model's weights (names, dtypes, shapes and
bytes), the same for a checkpoint and its export. An export stores a SHA-256 of it and of its
metadata (:func:`export_checksum`) that every load recomputes and compares (safetensors has no
checksum of its own); every sample, evaluate, likelihood and ablate output records the digest
with the step and EMA / raw (:class:`LoadedModel`), so that ``lscore merge`` can refuse shards
drawn from different weights.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lightning_score.config import ConfigError, ExperimentConfig, flatten, to_dict
from lightning_score.experiment import build_score_model, from_dict
from lightning_score.nets import ScoreModel

MODEL_PREFIX = "score_model."
#: the weights file of an export, and the metadata keys that make it one of ours
EXPORT_FILE = "model.safetensors"
EXPORT_FORMAT = "lightning-score"
#: the metadata key of an export's checksum (:func:`export_checksum`)
EXPORT_CHECKSUM = "sha256"
_CHUNK = 1 << 24  # bytes per read while checking a record's CRC-32


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or lacks what was asked of it."""


def _require_zip(path: Path) -> None:
    """Refuse a path that is no file, and files without the zip directory that torch.save writes
    last (text files, other formats, truncated copies), before torch.load turns them into
    obscure tracebacks."""
    if path.is_dir():
        raise CheckpointError(not_a_checkpoint_folder(path))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass the path of a .ckpt file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint {path} is corrupt, truncated or not a checkpoint at all (no zip archive "
            "as torch.save writes): pass a .ckpt written by `lscore train`, or an earlier "
            "checkpoint of the run (resume=auto picks the newest one that verifies)"
        )


def verify_checkpoint(path: str | Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a zip archive (``torch.save``'s format)
    whose records all match their stored CRC-32.

    Archives written with ``torch.utils.serialization.config.save.compute_crc32 = False`` store
    zeros instead of checksums; they cannot be checked and pass.
    """
    path = Path(path)
    _require_zip(path)
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
            if all(r.CRC == 0 for r in records):
                return
            for record in records:
                with archive.open(record) as fh:  # zipfile compares the CRC-32 at the end
                    while fh.read(_CHUNK):
                        pass
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {path} is damaged: checksum mismatch or broken archive ({err}); "
            "use an earlier checkpoint of the run (resume=auto picks the newest one that verifies)"
        ) from None


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    mmap: bool = False,
    verify: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint dict without unpickling arbitrary objects, its checksums verified.

    ``mmap=True, verify=False`` maps tensors lazily instead of reading them: a cheap read of the
    metadata (step, config) that says nothing about the tensors' bytes.
    """
    path = Path(path)
    if verify:
        verify_checkpoint(path)
    else:
        _require_zip(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (
        RuntimeError,
        EOFError,
        KeyError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
        ValueError,
    ) as err:
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
        saved = ckpt["hyper_parameters"]["config"]
    except (KeyError, TypeError):
        raise CheckpointError(
            "checkpoint carries no lightning-score config (hyper_parameters.config): "
            "was it written by `lscore train`?"
        ) from None
    try:
        return from_dict(saved)
    except (ConfigError, TypeError, ValueError, OverflowError) as err:
        raise CheckpointError(
            f"the checkpoint's config does not fit this version of lightning-score ({err}); "
            "was it written by another version, or edited?"
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


def is_loadable_checkpoint(path: Path) -> bool:
    """Whether ``path`` verifies and loads as a checkpoint of ours (weights, step and config): a
    score model's, or a noisy classifier's (``lscore train-classifier``)."""
    try:
        ckpt = load_checkpoint(path, mmap=True)
        saved = ckpt.get("hyper_parameters")
        if not (isinstance(saved, dict) and isinstance(saved.get("classifier_config"), dict)):
            checkpoint_config(ckpt)
        return "global_step" in ckpt and "state_dict" in ckpt
    except CheckpointError:
        return False


def export_file(path: str | Path) -> Path | None:
    """The safetensors file of an export given as the file itself or its folder; None otherwise."""
    path = Path(path)
    if path.is_dir() and (path / EXPORT_FILE).is_file():
        return path / EXPORT_FILE
    return path if path.suffix == ".safetensors" else None


def load_export(path: str | Path, ema: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The weights and the metadata (``config`` as JSON, ``weights``, ``step``) of an export."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"export {path} does not exist: pass a model.safetensors or its folder"
        )
    try:
        with safe_open(path, framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(path)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({err}): export it again "
            "(`lscore export CKPT --format safetensors --out DIR`)"
        ) from None
    if meta.get("format") != EXPORT_FORMAT or "config" not in meta:
        raise CheckpointError(
            f"{path} carries no lightning-score config in its metadata: only files written by "
            "`lscore export --format safetensors` (or `lscore convert` of a diffusers model) load"
        )
    if EXPORT_CHECKSUM not in meta:
        raise CheckpointError(
            f"{path} has no checksum (written before exports carried one), so its weights cannot "
            "be verified: export it again with `lscore export CKPT --format safetensors`"
        )
    if export_checksum(state, meta) != meta[EXPORT_CHECKSUM]:
        raise CheckpointError(
            f"export {path} is damaged: its weights or metadata do not match the checksum stored "
            "at export; export it again from the checkpoint"
        )
    try:
        json.loads(meta["config"])
    except ValueError as err:
        raise CheckpointError(f"{path}: its metadata 'config' is not JSON ({err})") from None
    held = meta.get("weights", "ema")
    if held not in ("ema", "raw"):
        raise CheckpointError(
            f"{path}: its metadata says weights={held!r}, neither 'ema' nor 'raw': export it "
            "again with `lscore export`"
        )
    if ema != (held == "ema"):
        fix = "pass --no-ema" if held == "raw" else "drop --no-ema (or export with --raw)"
        raise CheckpointError(f"{path} holds the {held.upper()} weights only: {fix}")
    return state, meta


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``state`` in name order: which weights
    made an output, the same whether they were read from a checkpoint or from its export."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def export_checksum(state: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> str:
    """SHA-256 of an export's weights and of every metadata entry but the checksum itself."""
    fields = {k: v for k, v in meta.items() if k != EXPORT_CHECKSUM}
    text = weights_digest(state) + json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class LoadedModel:
    """A score model ready for samplers and metrics, and which weights it holds."""

    model: ScoreModel
    config: ExperimentConfig
    source: str
    step: int | None
    ema: bool
    sha256: str
    posthoc_ema: dict[str, Any] | None = None  # the reconstruction's record, if the EMA is one

    def record(self) -> dict[str, Any]:
        """What an output JSON records of the weights that made it."""
        out = {
            "checkpoint": self.source,
            "step": self.step,
            "ema": self.ema,
            "weights_sha256": self.sha256,
        }
        if self.posthoc_ema is not None:
            out["posthoc_ema"] = self.posthoc_ema
        return out


def load_model(
    path: str | Path, ema: bool = True, map_location: str | torch.device = "cpu"
) -> LoadedModel:
    """Rebuild the score model of a training checkpoint or an export, with its provenance."""
    exported = export_file(path)
    if exported is None:
        # to the CPU: a device problem is not a checkpoint problem
        return model_of_checkpoint(load_checkpoint(path), path, ema, map_location)
    state, meta = load_export(exported, ema)
    cfg = stored_config(json.loads(meta["config"]), exported)
    step = int(meta["step"]) if meta.get("step", "").isdigit() else None
    return _loaded(cfg, state, path, step, ema, map_location)


def model_of_checkpoint(
    ckpt: dict[str, Any], path: str | Path, ema: bool, map_location: str | torch.device = "cpu"
) -> LoadedModel:
    """The score model of a loaded training checkpoint dict (read from ``path``)."""
    step = int(ckpt["global_step"]) if "global_step" in ckpt else None
    loaded = _loaded(checkpoint_config(ckpt), model_state(ckpt, ema), path, step, ema, map_location)
    loaded.posthoc_ema = ckpt.get("posthoc_ema")
    return loaded


def _loaded(
    cfg: ExperimentConfig,
    state: dict[str, torch.Tensor],
    path: str | Path,
    step: int | None,
    ema: bool,
    map_location: str | torch.device,
) -> LoadedModel:
    model = score_model_with(cfg, state, path)
    digest = weights_digest(model.state_dict())
    return LoadedModel(model.to(map_location).eval(), cfg, str(path), step, ema, digest)


def load_score_model(
    path: str | Path, ema: bool = True, map_location: str | torch.device = "cpu"
) -> tuple[ScoreModel, ExperimentConfig]:
    """Rebuild the score model of a training checkpoint or an export, ready for samplers and
    metrics."""
    loaded = load_model(path, ema, map_location)
    return loaded.model, loaded.config


def not_a_checkpoint_folder(path: Path) -> str:
    """Why a folder is not a checkpoint, with the command that makes one of it where it can."""
    if (path / "unet" / "config.json").is_file() or (path / "model_index.json").is_file():
        return (
            f"{path} is a diffusers model folder, not a checkpoint: convert it first with "
            f"`lscore convert {path} --data NAME` and pass the folder that writes"
        )
    return (
        f"{path} is a folder without {EXPORT_FILE}: pass a .ckpt file written by `lscore train` "
        "or an export folder (`lscore export`)"
    )


def stored_config(saved: Any, path: str | Path) -> ExperimentConfig:
    """The config stored with weights at ``path``, refused in one line if it is not one."""
    try:
        return from_dict(saved)
    except (ConfigError, TypeError, ValueError, OverflowError) as err:
        raise CheckpointError(
            f"the config stored in {path} is not valid ({err}): was it written by another "
            "version of lightning-score, or edited?"
        ) from None


def score_model_with(
    cfg: ExperimentConfig, state: dict[str, torch.Tensor], path: str | Path
) -> ScoreModel:
    """The score model of ``cfg`` holding ``state`` (read from ``path``); every key and every
    shape must fit."""
    try:
        model = build_score_model(cfg)
    except (OverflowError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"the config stored in {path} does not build a model ({err}): was it edited?"
        ) from None
    own = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} where the config's network has {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if wrong:
        raise CheckpointError(
            f"the weights in {path} do not fit the config stored with them ({len(wrong)} "
            f"shape(s) differ, first: {wrong[0]}): the config was edited or belongs to another "
            "model; pass the file that was written with these weights"
        )
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint {path} does not match its network '{cfg.model.name}': "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return model


#: Config entries that define a run's trajectory: continuing a run with one of them changed would
#: silently make it a different run. Where data is read from and how fast may change.
TRAJECTORY_KEYS = (
    *("seed", "sde.", "model.", "loss.", "optim.", "ema.", "data."),
    *("trainer.precision", "trainer.gradient_clip_val"),
)
RELOCATABLE_KEYS = ("data.root", "data.num_workers", "data.download")


def config_changes(saved: ExperimentConfig, current: ExperimentConfig) -> list[str]:
    """``key: saved -> current`` for every trajectory-defining entry that differs."""
    old, new = flatten(to_dict(saved)), flatten(to_dict(current))
    keys = sorted(set(old) | set(new))
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in keys
        if k.startswith(TRAJECTORY_KEYS)
        and not k.startswith(RELOCATABLE_KEYS)
        and old.get(k) != new.get(k)
    ]


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """All checkpoint files of a run, by name: ``checkpoints/*.ckpt`` and the
    ``hpc_ckpt_*.ckpt`` that Lightning writes on SLURM's requeue signal."""
    run_dir = Path(run_dir)
    files = [*(run_dir / "checkpoints").glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    return sorted(files)


@dataclass
class ResumePoint:
    """The checkpoint to continue from, and why each other candidate was passed over."""

    path: Path
    step: int
    config: ExperimentConfig
    skipped: list[str] = field(default_factory=list)


def _preference(path: Path) -> int:
    """Among files of the same step: ``last`` (written last), then the others."""
    return {"last.ckpt": 0, "last-prev.ckpt": 2}.get(path.name, 1)


def find_resume_checkpoint(run_dir: str | Path) -> ResumePoint | None:
    """The checkpoint of ``run_dir`` with the highest stored step that verifies; None if it has
    none. Unreadable files are passed over, never touched; if none verifies, the error says why.

    The steps come from a cheap metadata read of every file; only the chosen one (and any that
    fail before it) is read in full to verify its checksums.
    """
    skipped: list[str] = []
    candidates: list[tuple[int, Path, ExperimentConfig]] = []
    for path in run_checkpoints(run_dir):
        try:
            ckpt = load_checkpoint(path, mmap=True, verify=False)
            candidates.append((int(ckpt["global_step"]), path, checkpoint_config(ckpt)))
        except (CheckpointError, KeyError) as err:
            skipped.append(str(err) if isinstance(err, CheckpointError) else f"{path}: no {err}")
    candidates.sort(key=lambda c: (-c[0], _preference(c[1]), c[1].name))
    for step, path, config in candidates:
        try:
            verify_checkpoint(path)
            return ResumePoint(path, step, config, skipped)
        except CheckpointError as err:
            skipped.append(str(err))
    if skipped:
        raise CheckpointError(
            f"no checkpoint of {run_dir} can be resumed from: {'; '.join(skipped)}; "
            "pass resume=<path> to a good copy, or resume=none with a new name= for a new run"
        )
    return None
