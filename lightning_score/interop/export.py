"""Put a trained model where the ecosystem is: a safetensors file, or a diffusers folder.

``safetensors``: ``model.safetensors`` (one set of weights, EMA by default; the resolved config,
which set it is and the training step in its metadata, so the file alone rebuilds the model and
``lscore sample`` / ``evaluate`` / ``ablate`` / ``likelihood`` take it), ``config.json`` (the
same config, for reading) and ``README.md`` (a model card).

``diffusers``: ``unet/`` (a ``UNet2DModel``), ``scheduler/`` and, where diffusers has one, the
pipeline's ``model_index.json``, so ``DDPMPipeline.from_pretrained`` (VP) or
``ScoreSdeVePipeline.from_pretrained`` (VE) load it. Only exact maps are written: the network
must be a UNet2DModel (``nets/diffusers_layout.py``) and the formulation must be a diffusers
scheduler's (``nets/diffusers_interop.py``); the folder is checked against our model on fixed
inputs before it is written. Anything else is refused with the reason.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_score.config import ExperimentConfig, to_dict
from lightning_score.data import data_shape
from lightning_score.experiment import from_dict
from lightning_score.nets.score import ScoreModel
from lightning_score.outputs import atomic_path
from lightning_score.sde import SDES
from lightning_score.training.checkpoint import (
    EXPORT_FILE,
    EXPORT_FORMAT,
    CheckpointError,
    checkpoint_config,
    export_file,
    load_checkpoint,
    load_export,
    model_state,
    score_model_with,
)

FORMATS = ("safetensors", "diffusers")
#: why a formulation has no diffusers scheduler, where the reason is not just "none exists"
NO_SCHEDULER = {
    "subvpsde": "the sub-VP SDE's std 1 - e^{-B(t)} is no DDPM/DDIM schedule "
    "(theirs is sqrt(1 - alphas_cumprod))",
}
#: relative tolerance of the check that the diffusers folder computes what our model does
EXPORT_RTOL = 1e-4


@dataclass
class Trained:
    """A model to export and what the model card says about it."""

    model: ScoreModel
    config: ExperimentConfig
    weights: str  # "ema" or "raw"
    step: int | None
    source: Path


def load_trained(path: str | Path, raw: bool = False) -> Trained:
    """The EMA (or, with ``raw``, the raw) weights of a training checkpoint or an export."""
    path = Path(path)
    exported = export_file(path)
    if exported is not None:
        state, meta = load_export(exported, ema=not raw)
        cfg = from_dict(json.loads(meta["config"]))
        step = int(meta["step"]) if meta.get("step", "").isdigit() else None
    else:
        ckpt = load_checkpoint(path)
        cfg = checkpoint_config(ckpt)
        if not raw and "current_model_state" not in ckpt:
            raise CheckpointError(
                f"{path} has no EMA weights (trained with ema.enabled=false): pass --raw to "
                "export its raw weights"
            )
        state = model_state(ckpt, ema=not raw)
        step = int(ckpt["global_step"]) if "global_step" in ckpt else None
    model = score_model_with(cfg, state, path).eval()
    return Trained(model, cfg, "raw" if raw else "ema", step, path)


# -- model card ------------------------------------------------------------------------------
def run_metrics(source: Path) -> list[tuple[str, str, float, str]]:
    """(file, metric, value, context) for the metric JSONs of the run ``source`` belongs to:
    ``<run>/eval`` (the evaluation callback) and ``<checkpoints>/eval`` (``lscore evaluate`` /
    ``likelihood`` beside a checkpoint)."""
    rows = []
    folders = dict.fromkeys([source.parent.parent / "eval", source.parent / "eval"])
    for folder in folders:
        for file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                data = json.loads(file.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(data, dict):
                continue
            found = dict(data.get("metrics", {})) if isinstance(data.get("metrics"), dict) else {}
            found.update({k: v for k, v in data.items() if k.startswith("bpd")})
            context = ", ".join(
                f"{k} {data[k]:g}" if isinstance(data[k], (int, float)) else f"{k} {data[k]}"
                for k in ("step", "split", "num_samples", "points", "nfe")
                if k in data and data[k] is not None
            )
            for name, value in found.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    rows.append((file.name, name, float(value), context))
    return rows


def _sde_entries(cfg: ExperimentConfig) -> str:
    takes = inspect.signature(SDES[cfg.sde.name].__init__).parameters
    return ", ".join(f"{k} {v:g}" for k, v in asdict(cfg.sde).items() if k in takes)


def model_card(trained: Trained, usage: str) -> str:
    """A Markdown model card: what was trained on what, how, and what it scored."""
    cfg, model = trained.config, trained.model
    shape = "x".join(map(str, data_shape(cfg.data)))
    sde = model.sde
    low, high = sde.scale_data(torch.tensor([0.0, 1.0])).tolist()
    row = " ".join((type(model.param).__doc__ or "").split())
    params = sum(p.numel() for p in model.parameters())
    kwargs = json.dumps(cfg.model.kwargs) if cfg.model.kwargs else "preset defaults"
    ema = f"EMA (decay {cfg.ema.decay:g})" if trained.weights == "ema" else "raw (no EMA)"
    lines = [
        f"# {cfg.name}",
        "",
        "A score-based generative model (Song et al. 2021) trained with lightning-score.",
        "",
        "| | |",
        "| --- | --- |",
        f"| data | `{cfg.data.name}`, {shape}, seen by the model in [{low:g}, {high:g}] |",
        f"| SDE | `{cfg.sde.name}` ({_sde_entries(cfg)}) |",
        f"| parameterization | `{model.param.name}`: {row} |",
        f"| network | `{cfg.model.name}` ({kwargs}), {params:,} parameters |",
        f"| training steps | {trained.step if trained.step is not None else 'unknown'} |",
        f"| weights | {ema} |",
        f"| loss | weighting `{cfg.loss.weighting}`, time sampler `{cfg.loss.time_sampler}` |",
        f"| source | `{trained.source}` |",
        "",
        "## Metrics",
        "",
    ]
    metrics = run_metrics(trained.source)
    if metrics:
        lines += ["| file | metric | value | context |", "| --- | --- | --- | --- |"]
        lines += [f"| {f} | {n} | {v:.4g} | {c} |" for f, n, v, c in metrics]
    else:
        lines.append("No metric files were found in the run directory (`eval/*.json`).")
    return "\n".join([*lines, "", "## Use", "", usage.strip(), ""])


# -- safetensors -----------------------------------------------------------------------------
def write_safetensors(trained: Trained, out: Path) -> Path:
    """``model.safetensors`` + ``config.json`` + ``README.md`` in ``out``; returns the file."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = to_dict(trained.config)
    state = {k: v.detach().cpu().contiguous() for k, v in trained.model.state_dict().items()}
    meta = {
        "format": EXPORT_FORMAT,
        "config": json.dumps(config),
        "weights": trained.weights,
        "step": "" if trained.step is None else str(trained.step),
        "source": str(trained.source),
    }
    path = out / EXPORT_FILE
    with atomic_path(path) as tmp:  # whole or absent, and 0644 like the rest of the export
        save_file(state, tmp, metadata=meta)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    flag = "" if trained.weights == "ema" else " --no-ema"
    usage = f"""
```bash
lscore sample {out}{flag} --num 64 --out samples/
lscore likelihood {out}{flag} --split test
```

`model.safetensors` holds the {trained.weights.upper()} weights under the keys of
`ScoreModel.state_dict()`; its metadata holds the resolved config (`config`, the same as
`config.json`), `weights` and `step`.
"""
    (out / "README.md").write_text(model_card(trained, usage))
    return path


# -- diffusers -------------------------------------------------------------------------------
def _ve_pair(model: ScoreModel, unet: Any, scheduler: Any, x: Tensor, t: Tensor):
    """The VE row: UNet2DModel at sigma(t) returns the score."""
    return model(x, t), unet(x, model.sde.sigma(t)).sample


def _vp_pair(model: ScoreModel, unet: Any, scheduler: Any, x: Tensor, t: Tensor):
    """The VP row: UNet2DModel at the DDPM timestep (N - 1) t returns the noise z = our F."""
    return model.network(x, t), unet(x, model.param.c_noise(t)).sample


def _edm_pair(model: ScoreModel, unet: Any, scheduler: Any, x: Tensor, t: Tensor):
    """EDM: the scheduler's preconditioning around UNet2DModel gives our denoiser."""
    sigma = model.sde.sigma(t)
    s4 = sigma[:, None, None, None]
    out = unet(scheduler.precondition_inputs(x, s4), scheduler.precondition_noise(sigma)).sample
    return model.denoise(x, t), scheduler.precondition_outputs(x, out, s4)


#: per row: (ours, diffusers') on the same inputs, for the check before writing
COMPARE: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "ve": _ve_pair,
    "vp": _vp_pair,
    "edm": _edm_pair,
}

USAGE = {
    "ve": "`UNet2DModel(x, sigma).sample` is the score at noise level sigma (data in [0, 1]).",
    "vp": "`UNet2DModel(x, i).sample` is the noise at DDPM step i = (N - 1) t (data in [-1, 1]).",
    "edm": "Wrap `UNet2DModel` in the scheduler's `precondition_inputs` / `precondition_noise` / "
    "`precondition_outputs` for the denoiser D(x; sigma) (data in [-1, 1]).",
}


def diffusers_components(trained: Trained) -> tuple[Any, Any, Any]:
    """(row, UNet2DModel, scheduler) holding ``trained`` exactly, or NotExpressible with why."""
    import diffusers

    from lightning_score.nets.diffusers_interop import EXPORT_ROWS
    from lightning_score.nets.diffusers_layout import NotExpressible, to_diffusers_unet

    cfg = trained.config
    pair = (cfg.sde.name, cfg.model.parameterization)
    row = EXPORT_ROWS.get(pair)
    if row is None:
        exportable = ", ".join(f"{s}+{p} ({r.scheduler})" for (s, p), r in EXPORT_ROWS.items())
        why = NO_SCHEDULER.get(cfg.sde.name, f"no diffusers scheduler runs the '{pair[1]}' row on "
                               f"the {pair[0]} SDE")  # fmt: skip
        raise NotExpressible(
            f"cannot export to diffusers: {why}; exportable formulations: {exportable}"
        )
    try:
        unet = to_diffusers_unet(trained.model.net, data_shape(cfg.data))
    except NotExpressible as err:
        raise NotExpressible(
            f"cannot export to diffusers: network '{cfg.model.name}': {err}"
        ) from None
    embedding = unet.config.time_embedding_type
    if embedding != row.embedding:
        raise NotExpressible(
            f"cannot export to diffusers: the {row.scheduler} ({row.parameterization} row) needs "
            f"a '{row.embedding}' time "
            f"embedding, this network has '{embedding}'"
        )
    scheduler = getattr(diffusers, row.scheduler)(**row.from_config(cfg))
    return row, unet, scheduler


def check_diffusers(trained: Trained, unet: Any, scheduler: Any, row: Any) -> float:
    """Largest difference, relative to the output scale, between ours and diffusers' on fixed
    noisy data over the time range."""
    model, sde = trained.model, trained.model.sde
    gen = torch.Generator().manual_seed(0)
    shape = data_shape(trained.config.data)
    t = torch.tensor([0.02, 0.3, 0.7, 1.0], dtype=torch.float64) * (sde.T - 1e-3) + 1e-3
    t = t.float()
    x0 = sde.scale_data(torch.rand(len(t), *shape, generator=gen))
    mean, std = sde.marginal_prob(x0, t)
    x = mean + std[:, None, None, None] * torch.randn(x0.shape, generator=gen)
    with torch.no_grad():
        ours, theirs = COMPARE[row.parameterization](model, unet.eval(), scheduler, x, t)
    return float((ours - theirs).abs().max() / ours.abs().max().clamp_min(1.0))


def write_diffusers(trained: Trained, out: Path) -> Path:
    """A diffusers folder (``unet/``, ``scheduler/``, ``model_index.json`` where a pipeline
    exists) that computes what ``trained`` does; checked before it is written."""
    import diffusers

    row, unet, scheduler = diffusers_components(trained)
    error = check_diffusers(trained, unet, scheduler, row)
    if not error <= EXPORT_RTOL:
        raise RuntimeError(
            f"internal error: the diffusers model differs from ours by {error:.2e} (relative)"
        )
    out.mkdir(parents=True, exist_ok=True)
    if row.pipeline is not None:
        getattr(diffusers, row.pipeline)(unet=unet, scheduler=scheduler).save_pretrained(out)
    else:
        unet.save_pretrained(out / "unet")
        scheduler.save_pretrained(out / "scheduler")
    load = (
        f"{row.pipeline}.from_pretrained('{out}')"
        if row.pipeline
        else f"UNet2DModel.from_pretrained('{out}', subfolder='unet')"
    )
    usage = f"""
```python
from diffusers import {row.pipeline or "UNet2DModel"}, {row.scheduler}
{"pipe" if row.pipeline else "unet"} = {load}
scheduler = {row.scheduler}.from_pretrained('{out}', subfolder='scheduler')
```

{USAGE[row.parameterization]} Checked at export against lightning-score's model on fixed
inputs: {"identical" if error == 0 else f"equal to {error:.1e} (relative)"}.
"""
    (out / "README.md").write_text(model_card(trained, usage))
    return out


def export(checkpoint: str | Path, fmt: str, out: str | Path, raw: bool = False) -> Path:
    """Export ``checkpoint`` as ``fmt`` (one of :data:`FORMATS`) into the folder ``out``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    trained = load_trained(checkpoint, raw)
    writer = write_safetensors if fmt == "safetensors" else write_diffusers
    return writer(trained, Path(out))


__all__ = [
    "FORMATS",
    "Trained",
    "check_diffusers",
    "diffusers_components",
    "export",
    "load_trained",
    "model_card",
    "run_metrics",
    "write_diffusers",
    "write_safetensors",
]
