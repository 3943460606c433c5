"""``lscore ablate CKPT --samplers SPEC --out DIR``: sampler settings on the same seeds, compared.

``SPEC`` is either a comma-separated list of ``sampler[:steps]`` (``euler:10,heun:10,pc:100``) or a
YAML/JSON file holding a list of SamplingConfig overrides; a list value expands into one row per
element (``{sampler: heun, schedule: edm, steps: [5, 10, 20]}``) and an optional ``label`` names the
family. Writes ``ablation.csv``, ``ablation.md`` and ``ablation.png`` (quality, or seconds when no
metric is asked for, against NFE; one line per family).

Quality: ``--metric fid --ref-stats FILE`` (the standard Inception, ``lightning_score.metrics``), or
the default ``sliced_wasserstein_to_data``: a cheap, clearly named proxy, the mean over 128 random
directions of the 1-D Wasserstein-1 distance between samples and as many data examples (pixels
in [0, 1]); lower is better. ``--metric none`` skips it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_score.commands.sample import add_model_arguments, resolve_device
from lightning_score.config import ExperimentConfig, SamplingConfig
from lightning_score.images import to_data_space
from lightning_score.sampling import check_sampling

SWD = "sliced_wasserstein_to_data"
COLUMNS = ["sampler", "steps", "nfe", "seconds", "samples_per_s"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--samplers", required=True, help="sampler[:steps],... or a YAML/JSON file")
    parser.add_argument(
        "--num", type=int, default=256, help="samples per setting (same seeds each)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--metric", choices=["swd", "fid", "none"], default="swd")
    parser.add_argument(
        "--ref-stats", type=Path, default=None, help="reference stats .npz for --metric fid"
    )


def _entries(spec: str) -> list[dict[str, Any]]:
    path = Path(spec)
    if path.suffix.lower() in {".yaml", ".yml", ".json"} or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"sampler settings file {path} not found")
        from omegaconf import OmegaConf  # reads YAML and JSON alike

        data = OmegaConf.to_container(OmegaConf.load(path))
        if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
            raise ValueError(f"{path} must hold a list of SamplingConfig overrides (dicts)")
        return data
    entries = []
    for token in filter(None, (t.strip() for t in spec.split(","))):
        name, _, steps = token.partition(":")
        entry: dict[str, Any] = {"sampler": name}
        if steps:
            if not steps.isdigit():
                raise ValueError(f"'{token}': steps after ':' must be a positive integer")
            entry["steps"] = int(steps)
        entries.append(entry)
    if not entries:
        raise ValueError("--samplers is empty: give e.g. 'euler:10,heun:10' or a YAML file")
    return entries


def family(cfg: SamplingConfig) -> str:
    """A row's group in the table and the plot: the sampler without its step count."""
    if cfg.sampler == "pc":
        snr = f" snr={cfg.snr:g}" if cfg.corrector != "none" else ""
        return f"pc {cfg.predictor}/{cfg.corrector}{snr}"
    if cfg.sampler == "ode":
        return f"ode {cfg.method} rtol={cfg.rtol:g}"
    return f"{cfg.sampler} {cfg.schedule}"


def parse_settings(spec: str, base: SamplingConfig) -> list[tuple[str, SamplingConfig]]:
    """(family label, config) per row; list values expand, unknown keys list the valid ones."""
    fields = {f.name for f in dataclasses.fields(SamplingConfig)}
    settings = []
    for entry in _entries(spec):
        entry = dict(entry)
        label = entry.pop("label", None)
        unknown = sorted(set(entry) - fields)
        if unknown:
            raise ValueError(
                f"unknown sampler settings {unknown}; valid: label, {', '.join(sorted(fields))}"
            )
        keys = list(entry)
        grids = [v if isinstance(v, list) else [v] for v in entry.values()]
        for values in itertools.product(*grids):
            overrides = dict(zip(keys, values, strict=True))
            if overrides.get("sampler", base.sampler) != "pc":
                overrides.setdefault("corrector", "none")
            cfg = dataclasses.replace(base, **overrides)
            settings.append((label or family(cfg), cfg))
    return settings


class Quality:
    """The quality column: its name and a function of samples in [0, 1] (or raw points)."""

    def __init__(
        self, args: argparse.Namespace, exp: ExperimentConfig, device: torch.device
    ) -> None:
        self.name: str | None = None
        if args.metric == "swd":
            from lightning_score.data import data_examples

            self.name, self.reference = SWD, data_examples(exp.data, exp.seed, args.num)
        elif args.metric == "fid":
            if args.ref_stats is None:
                raise ValueError(
                    "--metric fid needs --ref-stats FILE.npz (make one with `lscore stats`)"
                )
            from lightning_score.metrics import ReferenceStats, count_suffix, load_inception

            self.extractor = load_inception().to(device)
            self.stats = ReferenceStats.load(
                args.ref_stats, expected_dim=self.extractor.num_features
            )
            self.name = f"fid_{count_suffix(args.num)}"
        self.metric = args.metric
        self.device = device

    def __call__(self, samples: Tensor, batch_size: int) -> float:
        if self.metric == "swd":
            from lightning_score.metrics.sliced import sliced_wasserstein

            return sliced_wasserstein(samples, self.reference)
        from lightning_score.metrics import ImageMetrics

        metrics = ImageMetrics(["fid"], self.extractor).to(self.device)
        metrics.set_reference(self.stats)
        for chunk in samples.split(batch_size):
            metrics.update(chunk.to(self.device))
        return next(iter(metrics.compute().values()))


def write_outputs(rows: list[dict[str, Any]], quality: str | None, out: Path) -> None:
    columns = COLUMNS + ([quality] if quality else [])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "ablation.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    (out / "ablation.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = quality or "seconds"
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["sampler"] for r in rows):
        pts = sorted((r["nfe"], r[y]) for r in rows if r["sampler"] == name)
        ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("NFE (score evaluations per sample)")
    ax.set_ylabel(y)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.savefig(out / "ablation.png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from lightning_score.checkpoint import load_score_model
    from lightning_score.data import data_shape
    from lightning_score.sampling.generate import generate

    device = resolve_device(args.device)
    model, exp = load_score_model(args.checkpoint, ema=args.ema, map_location=device)
    settings = parse_settings(args.samplers, exp.sampling)
    for _, cfg in settings:  # refuse bad settings before spending time on the good ones
        check_sampling(model.sde, cfg)
    quality = Quality(args, exp, device)
    rows = []
    for label, cfg in settings:
        gen = generate(
            model,
            model.sde,
            data_shape(exp.data),
            cfg,
            num=args.num,
            batch_size=args.batch_size,
            seed=args.seed,
            device=device,
            progress=args.progress,
        )
        row: dict[str, Any] = {
            "sampler": label,
            "steps": cfg.steps if cfg.sampler != "ode" else "adaptive",
            "nfe": gen.nfe,
            "seconds": gen.seconds,
            "samples_per_s": args.num / gen.seconds,
        }
        if quality.name:
            row[quality.name] = quality(to_data_space(model.sde, gen.samples), args.batch_size)
        rows.append(row)
        print(json.dumps(row))
    write_outputs(rows, quality.name, args.out)
    from lightning_score.loggers import report_to_wandb  # no-op unless W&B is in use

    plot, table = {"ablation/quality_vs_nfe": args.out / "ablation.png"}, {"ablation/results": rows}
    report_to_wandb(exp, args.out, "ablate", vars(args), images=plot, tables=table)
    print(f"wrote {args.out / 'ablation.csv'}, ablation.md, ablation.png")
    return 0
