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
import os
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
from lightning_score.outputs import atomic_folder, file_mode
from lightning_score.sde import SDES
from lightning_score.training.checkpoint import (
    EXPORT_CHECKSUM,
    EXPORT_FILE,
    EXPORT_FORMAT,
    CheckpointError,
    checkpoint_config,
    export_checksum,
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
    #: where weights that lightning-score did not train came from (None: trained here)
    provenance: str | None = None


def load_trained(path: str | Path, raw: bool = False) -> Trained:
    """The EMA (or, with ``raw``, the raw) weights of a training checkpoint or an export."""
    path = Path(path)
    exported = export_file(path)
    if exported is not None:
        state, meta = load_export(exported, ema=not raw)
        cfg = from_dict(json.loads(meta["config"]))
        step = int(meta["step"]) if meta.get("step", "").isdigit() else None
        provenance = meta.get("provenance") or None
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
        provenance = official_provenance(ckpt.get("converted_from"))
    model = score_model_with(cfg, state, path).eval()
    return Trained(model, cfg, "raw" if raw else "ema", step, path, provenance)


def official_provenance(converted: Any) -> str | None:
    """The provenance of a checkpoint ``lscore convert`` made from score_sde_pytorch weights."""
    if not isinstance(converted, dict):
        return None
    return (
        f"converted from the score_sde_pytorch checkpoint `{Path(str(converted.get('path'))).name}` "
        f"(official config `{converted.get('config')}`, step {converted.get('step')}): trained by "
        "the authors of Song et al. (2021) with their code, not by lightning-score; the EMA and "
        "raw weights are theirs"
    )


def diffusers_provenance(source: Path) -> str:
    """The provenance of a model ``lscore convert`` made from a diffusers folder."""
    return (
        f"converted from the diffusers model `{source.resolve().name}`: its weights as published "
        "(one set, whatever averaging its trainers applied), not trained by lightning-score"
    )


# -- model card ------------------------------------------------------------------------------
def run_metrics(source: Path) -> list[tuple[str, str, float, str, str]]:
    """(file, metric, value, context, reference set) for the metric JSONs of the run ``source``
    belongs to: ``<run>/eval`` (the evaluation callback) and ``<checkpoints>/eval``
    (``lscore evaluate`` / ``likelihood`` beside a checkpoint). The reference set is what the
    metric compares with: the statistics of FID / KID, the data split of bits/dim."""
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
            reference = data.get("reference_set") or (
                f"{data['split']} split" if "split" in data else "not recorded"
            )
            for name, value in found.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    rows.append((file.name, name, float(value), context, str(reference)))
    return rows


def _sde_entries(cfg: ExperimentConfig) -> str:
    takes = inspect.signature(SDES[cfg.sde.name].__init__).parameters
    return ", ".join(f"{k} {v:g}" for k, v in asdict(cfg.sde).items() if k in takes)


def front_matter(trained: Trained, library: str) -> str:
    """Hugging Face's model-card metadata: library, license, tags, pipeline tag."""
    cfg = trained.config
    images = len(data_shape(cfg.data)) == 3
    tags = ["lightning-score", "score-based-generative-modeling", "diffusion", cfg.sde.name]
    tags += [f"parameterization-{cfg.model.parameterization}", f"data-{cfg.data.name}"]
    if trained.config.model.num_classes:
        tags.append("class-conditional")
    lines = ["---", f"library_name: {library}", "license: other", "tags:"]
    lines += [f"- {tag}" for tag in tags]
    if images:
        lines.append("pipeline_tag: unconditional-image-generation")
    return "\n".join([*lines, "---", ""])


def pipeline_usage(location: str, trained: Trained, extra: str = "") -> str:
    """A runnable snippet that samples through :class:`ScorePipeline`."""
    flag = "" if trained.weights == "ema" else ", ema=False"
    images = len(data_shape(trained.config.data)) == 3
    show = (
        'out.images[0].save("sample.png")  # PIL images; out.uint8 is a (N, C, H, W) tensor'
        if images
        else "points = out.samples  # (N, 2), in the data's coordinates"
    )
    return f"""```python
from lightning_score import ScorePipeline

pipe = ScorePipeline.from_pretrained("{location}"{flag}{extra})
out = pipe(num=16, sampler="dpmpp_2m", steps=20, seed=0)
{show}
print(out.nfe, "score evaluations per sample")
```"""


def model_card(trained: Trained, usage: str, library: str = "lightning-score") -> str:
    """A Markdown model card with Hugging Face front matter: what was trained on what, how,
    where the weights come from, and what it scored against which reference."""
    cfg, model = trained.config, trained.model
    shape = "x".join(map(str, data_shape(cfg.data)))
    sde = model.sde
    low, high = sde.scale_data(torch.tensor([0.0, 1.0])).tolist()
    row = " ".join((type(model.param).__doc__ or "").split())
    params = sum(p.numel() for p in model.parameters())
    kwargs = json.dumps(cfg.model.kwargs) if cfg.model.kwargs else "preset defaults"
    if trained.provenance is not None:
        intro = f"A score-based generative model (Song et al. 2021), {trained.provenance}."
        held = "as in the source (see above)"
    else:
        intro = "A score-based generative model (Song et al. 2021) trained with lightning-score."
        held = f"EMA (decay {cfg.ema.decay:g})" if trained.weights == "ema" else "raw (no EMA)"
    lines = [
        front_matter(trained, library),
        f"# {cfg.name}",
        "",
        intro,
        "",
        "| | |",
        "| --- | --- |",
        f"| data | `{cfg.data.name}`, {shape}, seen by the model in [{low:g}, {high:g}] |",
        f"| SDE | `{cfg.sde.name}` ({_sde_entries(cfg)}) |",
        f"| parameterization | `{model.param.name}`: {row} |",
        f"| network | `{cfg.model.name}` ({kwargs}), {params:,} parameters |",
        f"| training steps | {trained.step if trained.step is not None else 'unknown'} |",
        f"| weights | {held} |",
        f"| loss | weighting `{cfg.loss.weighting}`, time sampler `{cfg.loss.time_sampler}` |",
        f"| source | `{trained.source}` |",
        "",
        "## Metrics",
        "",
    ]
    metrics = run_metrics(trained.source)
    if metrics:
        lines += [
            "| file | metric | value | context | reference set |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [f"| {f} | {n} | {v:.4g} | {c} | {r} |" for f, n, v, c, r in metrics]
        lines += [
            "",
            "FID and KID are biased upwards below 50,000 samples: compare figures only at the "
            "same sample count and reference set.",
        ]
    else:
        lines.append("No metric files were found in the run directory (`eval/*.json`).")
    license_note = (
        "`license: other`: the weights keep their source's terms; check them before reuse."
        if trained.provenance is not None
        else "`license: other`: the publisher sets the terms of these weights (edit the front "
        "matter)."
    )
    return "\n".join(
        [*lines, "", "## Use", "", usage.strip(), "", "## License", "", license_note, ""]
    )


# -- safetensors -----------------------------------------------------------------------------
def state_bytes(model: torch.nn.Module) -> int:
    """Bytes the model's weights take on disk, plus a MiB for headers and text files."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) + (1 << 20)


def write_safetensors(trained: Trained, out: Path, location: str | None = None) -> Path:
    """``model.safetensors`` (with its checksum) + ``config.json`` + ``README.md`` in ``out``,
    whole or not at all; returns the file. ``location``: where the card's snippet loads it from
    (default ``out``; a Hub repo id)."""
    from safetensors.torch import save_file

    config = to_dict(trained.config)
    state = {k: v.detach().cpu().contiguous() for k, v in trained.model.state_dict().items()}
    meta = {
        "format": EXPORT_FORMAT,
        "config": json.dumps(config),
        "weights": trained.weights,
        "step": "" if trained.step is None else str(trained.step),
        "source": str(trained.source),
        "provenance": trained.provenance or "",
    }
    meta[EXPORT_CHECKSUM] = export_checksum(state, meta)
    with atomic_folder(out, state_bytes(trained.model)) as folder:
        save_file(state, folder / EXPORT_FILE, metadata=meta)
        os.chmod(folder / EXPORT_FILE, file_mode())
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        write_card(trained, folder, out, location)
    return out / EXPORT_FILE


def write_card(trained: Trained, folder: Path, out: Path, location: str | None = None) -> None:
    """The safetensors export's model card, naming the folder by its final path ``out``."""
    flag = "" if trained.weights == "ema" else " --no-ema"
    usage = f"""
{pipeline_usage(location or str(out), trained)}

```bash
lscore sample {out}{flag} --num 64 --out samples/
lscore likelihood {out}{flag} --split test
```

`model.safetensors` holds the {trained.weights.upper()} weights under the keys of
`ScoreModel.state_dict()`; its metadata holds the resolved config (`config`, the same as
`config.json`), `weights`, `step` and `sha256`, a checksum of all of them that every load verifies.
"""
    (folder / "README.md").write_text(model_card(trained, usage))


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


def write_diffusers(trained: Trained, out: Path, location: str | None = None) -> Path:
    """A diffusers folder (``unet/``, ``scheduler/``, ``model_index.json`` where a pipeline
    exists) that computes what ``trained`` does; checked before it is written. ``location``:
    where the card's snippets load it from (default ``out``; a Hub repo id)."""
    import diffusers

    row, unet, scheduler = diffusers_components(trained)
    error = check_diffusers(trained, unet, scheduler, row)
    if not error <= EXPORT_RTOL:
        raise RuntimeError(
            f"internal error: the diffusers model differs from ours by {error:.2e} (relative)"
        )
    with atomic_folder(out, state_bytes(unet)) as folder:
        if row.pipeline is not None:
            pipe = getattr(diffusers, row.pipeline)(unet=unet, scheduler=scheduler)
            pipe.save_pretrained(folder)
        else:
            unet.save_pretrained(folder / "unet")
            scheduler.save_pretrained(folder / "scheduler")
        write_diffusers_card(trained, folder, out, row, error, location)
    return out


def write_diffusers_card(
    trained: Trained, folder: Path, out: Path, row: Any, error: float, location: str | None
) -> None:
    """The diffusers export's model card, naming the folder by its final path ``out`` (or the
    Hub repo ``location`` it is to be published to)."""
    where = location or str(out)
    load = (
        f"{row.pipeline}.from_pretrained('{where}')"
        if row.pipeline
        else f"UNet2DModel.from_pretrained('{where}', subfolder='unet')"
    )
    usage = f"""
{pipeline_usage(where, trained, f", data={trained.config.data.name!r}")}

In diffusers:

```python
from diffusers import {row.pipeline or "UNet2DModel"}, {row.scheduler}
{"pipe" if row.pipeline else "unet"} = {load}
scheduler = {row.scheduler}.from_pretrained('{where}', subfolder='scheduler')
```

{USAGE[row.parameterization]} Checked at export against lightning-score's model on fixed
inputs: {"identical" if error == 0 else f"equal to {error:.1e} (relative)"}.
"""
    (folder / "README.md").write_text(model_card(trained, usage, library="diffusers"))


def export(
    checkpoint: str | Path,
    fmt: str,
    out: str | Path,
    raw: bool = False,
    repo_id: str | None = None,
) -> Path:
    """Export ``checkpoint`` as ``fmt`` (one of :data:`FORMATS`) into the folder ``out``; the
    model card loads it from ``repo_id`` when it is to be published there."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    trained = load_trained(checkpoint, raw)
    writer = write_safetensors if fmt == "safetensors" else write_diffusers
    return writer(trained, Path(out), repo_id)


__all__ = [
    "FORMATS",
    "Trained",
    "check_diffusers",
    "diffusers_components",
    "diffusers_provenance",
    "export",
    "load_trained",
    "model_card",
    "official_provenance",
    "run_metrics",
    "write_diffusers",
    "write_safetensors",
]
