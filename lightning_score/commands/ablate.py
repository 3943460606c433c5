"""``lscore ablate CKPT [--samplers SPEC] --out DIR``: sampler settings on the same seeds, compared.

Without ``--samplers``, every few-step family (DEFAULT_FAMILIES) runs at about 5, 10 and 20 NFE.

``SPEC`` is either a comma-separated list of ``sampler[:steps]`` (``euler:10,heun:10,pc:100``) or a
YAML/JSON file holding a list of SamplingConfig overrides; a list value expands into one row per
element (``{sampler: heun, schedule: edm, steps: [5, 10, 20]}``) and an optional ``label`` names the
family. Writes ``ablation.csv``, ``ablation.md``, ``ablation.png`` (quality, or seconds when no
metric is asked for, against NFE; one line per family; titled with the sample count) and a sample
grid per setting in ``grids/`` (2-D points: a scatter plot over the data).

Quality: ``--metric fid --ref-stats FILE`` (the standard Inception, ``lightning_score.evaluation``), or
the default ``sliced_wasserstein_to_data``: a cheap, clearly named proxy, the mean over 128 random
directions of the 1-D Wasserstein-1 distance between samples and as many data examples (pixels
in [0, 1]); lower is better. ``--metric none`` skips it.

Each quality figure comes with a paired bootstrap standard error over the samples (``--bootstrap``
replicates; ``lightning_score.evaluation.uncertainty`` says why a bootstrap and why paired), drawn as
error bars; the table marks the best setting and says which settings are within noise of it and
of the previous setting of their family (95 % interval of the difference containing 0).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_score.commands.sample import (
    add_model_arguments,
    add_speed_arguments,
    check_positive,
    resolve_device,
)
from lightning_score.config import ExperimentConfig, SamplingConfig
from lightning_score.outputs import add_overwrite_argument, atomic_path, check_outputs, write_text

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from lightning_score.evaluation import FeatureExtractor
    from lightning_score.evaluation.uncertainty import Bootstrap
    from lightning_score.sde import SDE

SWD = "sliced_wasserstein_to_data"
#: ``--samplers`` left out: each few-step family at about DEFAULT_NFE score evaluations (the step
#: count found by counting, ``sampling.cost.steps_for_nfe``). ddim at eta 0 is euler (a test
#: keeps them equal), so euler is not run twice; restart needs at least 11 NFE (one Heun step
#: into sigma = 0 plus its restart).
DEFAULT_FAMILIES = (
    "heun",
    "dpmpp_2m",
    "ddim",
    "euler_ancestral",
    "dpmpp_2m_sde",
    "dpmpp_3m",
    "dpmpp_3m_sde",
    "unipc",
    "deis",
    "restart",
)
DEFAULT_NFE = (5, 10, 20)
COLUMNS = ["sampler", "steps", "nfe", "seconds", "samples_per_s"]
OUTPUTS = ("ablation.csv", "ablation.md", "ablation.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_speed_arguments(parser)
    parser.add_argument(
        "--samplers",
        default=None,
        help="comma-separated sampler[:steps] (e.g. pc:100,heun:10,dpmpp_2m:10) or a YAML/JSON "
        "file holding a list of sampling settings (default: every few-step family, "
        f"{', '.join(DEFAULT_FAMILIES)}, at about {', '.join(map(str, DEFAULT_NFE))} NFE)",
    )
    parser.add_argument(
        "--num", type=int, default=256, help="samples per setting (same seeds each)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--metric",
        choices=["swd", "fid", "none"],
        default="swd",
        help="quality column: sliced Wasserstein distance to the data, FID (with --ref-stats) or "
        "none",
    )
    parser.add_argument(
        "--ref-stats", type=Path, default=None, help="reference stats .npz for --metric fid"
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=200,
        help="paired bootstrap replicates for the quality's standard errors (0: none)",
    )
    add_overwrite_argument(parser)


def _entries(spec: str) -> list[dict[str, Any]]:
    path = Path(spec)
    if path.suffix.lower() in {".yaml", ".yml", ".json"} or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"sampler settings file {path} not found")
        from omegaconf import OmegaConf  # reads YAML and JSON alike

        try:
            data = OmegaConf.to_container(OmegaConf.load(path))
        except Exception as err:  # yaml and OmegaConf raise several unrelated types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{path} is not valid YAML/JSON ({first})") from None
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
    knobs = f" order={cfg.order}" if cfg.sampler in ("unipc", "deis") else ""
    knobs += f" {cfg.variant}" if cfg.sampler == "unipc" else ""
    knobs += f" eta={cfg.eta:g}" if cfg.eta is not None else ""
    return f"{cfg.sampler}{knobs} {cfg.schedule}"


def default_settings(sde: SDE, base: SamplingConfig) -> list[tuple[str, SamplingConfig]]:
    """The default grid: DEFAULT_FAMILIES at about DEFAULT_NFE each, on ``base``'s grid options
    (eps, denoise, schedule, rho) with every other knob at its default."""
    from lightning_score.sampling.cost import steps_for_nfe

    settings = []
    for name in DEFAULT_FAMILIES:
        cfg = SamplingConfig(
            sampler=name,
            corrector="none",
            eps=base.eps,
            denoise=base.denoise,
            schedule=base.schedule,
            rho=base.rho,
        )
        steps = dict.fromkeys(steps_for_nfe(sde, cfg, nfe) for nfe in DEFAULT_NFE)
        settings += [(family(cfg), dataclasses.replace(cfg, steps=n)) for n in steps]
    return settings


def _with_overrides(base: SamplingConfig, overrides: dict[str, Any], spec: str) -> SamplingConfig:
    """``base`` with ``overrides``, type-checked by the config schema (``steps: ten`` is refused)."""
    from omegaconf import OmegaConf

    try:
        merged = OmegaConf.merge(OmegaConf.structured(base), overrides)
    except Exception as err:  # OmegaConf raises several unrelated types
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"{spec}: bad sampler setting {overrides} ({first})") from None
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


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
            cfg = _with_overrides(base, overrides, spec)
            settings.append((label or family(cfg), cfg))
    return settings


class Quality:
    """The quality column: per setting, its figure and what the bootstrap resamples
    (projections for the sliced Wasserstein distance, Inception features for FID)."""

    def __init__(
        self, args: argparse.Namespace, exp: ExperimentConfig, device: torch.device
    ) -> None:
        self.name: str | None = None
        if args.metric == "swd":
            from lightning_score.data import data_examples
            from lightning_score.evaluation.sliced import project

            self.name, self.reference = SWD, data_examples(exp.data, exp.seed, args.num)
            self.reference_features = project(self.reference)
        elif args.metric == "fid":
            if args.ref_stats is None:
                raise ValueError(
                    "--metric fid needs --ref-stats FILE.npz (make one with `lscore stats`)"
                )
            from lightning_score.evaluation import ReferenceStats, count_suffix, load_inception

            self.extractor = load_inception().to(device)
            self.stats = ReferenceStats.load(
                args.ref_stats, self.extractor.num_features, self.extractor.name
            )
            self.name = f"fid_{count_suffix(args.num)}"
        self.metric = args.metric
        self.device = device
        self.features: list[Tensor] = []

    def __call__(self, samples: Tensor, batch_size: int) -> float:
        """The figure of one setting's samples (in [0, 1]); keeps what the bootstrap needs."""
        import torch

        if self.metric == "swd":
            from lightning_score.evaluation.sliced import project, sliced_wasserstein

            self.features.append(project(samples))
            return sliced_wasserstein(samples, self.reference)
        from lightning_score.evaluation import ImageMetrics

        recorder = _Recording(self.extractor)
        metrics = ImageMetrics(["fid"], recorder).to(self.device)
        metrics.set_reference(self.stats)
        for chunk in samples.split(batch_size):
            metrics.update(chunk.to(self.device))
        self.features.append(torch.cat(recorder.pool).cpu())
        return next(iter(metrics.compute().values()))

    def bootstrap(self, replicates: int, seed: int) -> Bootstrap:
        """Paired bootstrap replicates of every setting scored so far."""
        import torch

        from lightning_score.evaluation import uncertainty

        if self.metric == "swd":
            stat = uncertainty.sliced_wasserstein_statistic(self.features, self.reference_features)
            m = self.reference_features.shape[0]
        else:
            mu, sigma = (torch.as_tensor(a) for a in (self.stats.mu, self.stats.sigma))
            stat, m = uncertainty.frechet_statistic(self.features, mu, sigma), 1
        n = min(f.shape[0] for f in self.features)
        return uncertainty.paired_bootstrap(stat, n, m, replicates, seed)


class _Recording:
    """An extractor that also keeps the pool features it hands to the metrics."""

    def __init__(self, extractor: FeatureExtractor) -> None:
        self.inner = extractor
        self.name, self.num_features = extractor.name, extractor.num_features
        self.has_logits = getattr(extractor, "has_logits", False)
        self.pool: list[Tensor] = []

    def features(self, images: Tensor) -> dict[str, Tensor]:
        out = self.inner.features(images)
        self.pool.append(out["pool"].detach())
        return out


def add_uncertainty(rows: list[dict[str, Any]], quality: str, boot: Bootstrap) -> list[str]:
    """``{quality}_stderr`` and the noise verdicts into ``rows``; returns the summary lines."""
    from lightning_score.evaluation.uncertainty import LEVEL, verdicts

    values = [r[quality] for r in rows]
    found = verdicts(values, [r["sampler"] for r in rows], boot)
    best = rows[values.index(min(values))]
    lines = []
    for row, v, se in zip(rows, found, boot.stderr().tolist(), strict=True):
        row[f"{quality}_stderr"] = se
        row["within_noise_of_best"] = v.best or v.same_as_best
        row["within_noise_of_previous"] = "" if v.same_as_previous is None else v.same_as_previous
        marks = ["(best)"] if v.best else []
        if v.same_as_best:
            marks.append("best")
            lines.append(f"{_label(row)} is within noise of the best, {_label(best)}")
        if v.same_as_previous and v.previous is not None:
            marks.append(f"{rows[v.previous]['steps']} steps")
            lines.append(f"{_label(row)} is within noise of {_label(rows[v.previous])}")
        row["noise"] = ", ".join(marks)
    rule = f"the {LEVEL:.0%} paired bootstrap interval of the difference contains 0"
    if not lines:
        return [f"No two compared settings are within noise ({rule} for none)."]
    return [f"Within noise ({rule}):", *(f"- {line}" for line in lines)]


def _label(row: dict[str, Any]) -> str:
    return f"{row['sampler']} @ {row['steps']} steps"


def write_outputs(
    rows: list[dict[str, Any]],
    quality: str | None,
    out: Path,
    notes: Sequence[str] = (),
    num: int | None = None,
) -> None:
    noise = [f"{quality}_stderr", "within_noise_of_best", "within_noise_of_previous"]
    with_noise = quality is not None and noise[0] in rows[0]
    columns = COLUMNS + ([quality] if quality else []) + (noise if with_noise else [])
    with atomic_path(out / "ablation.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    shown = COLUMNS + ([quality] if quality and not with_noise else [])
    header = shown + ([f"{quality} ± se", "within noise of"] if with_noise else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [fmt(r[c]) for c in shown]
        if with_noise:
            cells += [f"{r[quality]:.4g} ± {r[noise[0]]:.2g}", r["noise"]]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", *notes]
    write_text(out / "ablation.md", "\n".join(lines) + "\n")

    fig = ablation_figure(rows, quality, num)
    with atomic_path(out / "ablation.png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)


def ablation_figure(rows: list[dict[str, Any]], quality: str | None, num: int | None = None):
    """Quality (or seconds) against NFE, one line per family; quality with ±1 se error bars;
    titled with the sample count ``num`` when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = quality or "seconds"
    err = f"{quality}_stderr" if quality and f"{quality}_stderr" in rows[0] else None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["sampler"] for r in rows):
        pts = sorted((r["nfe"], r[y], r[err] if err else 0.0) for r in rows if r["sampler"] == name)
        nfe, value, se = zip(*pts, strict=True)
        if err:
            ax.errorbar(nfe, value, yerr=se, marker="o", capsize=3, label=name)
        else:
            ax.plot(nfe, value, marker="o", label=name)
    nfes = [r["nfe"] for r in rows]
    if max(nfes) > 10 * min(nfes):  # over a narrower range a log axis labels 1.2x10^1 ...
        ax.set_xscale("log")
    ax.set_xlabel("NFE (score evaluations per sample)")
    ax.set_ylabel(f"{y} (± 1 bootstrap se)" if err else y)
    count = f", {num} samples per setting (same seeds)" if num else ""
    ax.set_title(f"{y} against NFE{count}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def grid_name(index: int, label: str, cfg: SamplingConfig) -> str:
    """File name of a setting's sample grid: its row number, family and step count."""
    steps = cfg.steps if cfg.sampler != "ode" else "adaptive"
    slug = re.sub(r"[^A-Za-z0-9._]+", "-", f"{label} {steps}").strip("-")
    return f"{index:02d}_{slug}.png"


def run(args: argparse.Namespace) -> int:
    from lightning_score.data import data_examples, data_shape
    from lightning_score.images import save_grid, to_data_space
    from lightning_score.sampling import check_sampling
    from lightning_score.sampling.cost import estimate_sampling, format_duration
    from lightning_score.sampling.generate import generate
    from lightning_score.training.checkpoint import load_model
    from lightning_score.training.speed import for_sampling

    check_positive("--num", args.num)
    check_positive("--batch-size", args.batch_size)
    if args.bootstrap < 0 or args.bootstrap == 1:
        raise ValueError(
            f"--bootstrap must be 0 (off) or at least 2 replicates, got {args.bootstrap}"
        )
    device = resolve_device(args.device)
    check_outputs([args.out / name for name in OUTPUTS], args.overwrite, [Path(args.checkpoint)])
    loaded = load_model(args.checkpoint, ema=args.ema, map_location=device)
    model, exp = for_sampling(loaded.model, args.compile, args.bf16), loaded.config
    shape = data_shape(exp.data)
    if args.samplers is None:
        settings = default_settings(model.sde, exp.sampling)
    else:
        settings = parse_settings(args.samplers, exp.sampling)
    for _, cfg in settings:  # refuse bad settings before spending time on the good ones
        check_sampling(model.sde, cfg)
    grids = [
        args.out / "grids" / grid_name(i, label, cfg) for i, (label, cfg) in enumerate(settings)
    ]
    check_outputs(grids, args.overwrite, [Path(args.checkpoint)])
    quality = Quality(args, exp, device)
    estimates = [
        estimate_sampling(model, model.sde, shape, c, args.num, device) for _, c in settings
    ]
    known = [e.seconds for e in estimates if e is not None]
    if known:
        adaptive = " plus the ode settings" if len(known) < len(estimates) else ""
        print(
            f"{len(settings)} settings x {args.num} samples: about "
            f"{format_duration(sum(known))}{adaptive}"
        )
    overlay = data_examples(exp.data, exp.seed, 2000) if len(shape) == 1 else None
    rows = []
    for (label, cfg), grid in zip(settings, grids, strict=True):
        steps = cfg.steps if cfg.sampler != "ode" else "adaptive"
        gen = generate(
            model,
            model.sde,
            shape,
            cfg,
            num=args.num,
            batch_size=args.batch_size,
            seed=args.seed,
            device=device,
            progress=args.progress,
            desc=f"{label}, {steps} steps",
        )
        samples = to_data_space(model.sde, gen.samples)
        row: dict[str, Any] = {
            "sampler": label,
            "steps": steps,
            "nfe": gen.nfe,
            "seconds": gen.seconds,
            "samples_per_s": args.num / gen.seconds,
        }
        if quality.name:
            row[quality.name] = quality(samples, args.batch_size)
        rows.append(row)
        shown = samples if overlay is not None else samples[:64]  # every point, 64 images
        with atomic_path(grid) as tmp:
            save_grid(shown, tmp, f"{label}, {steps} steps, {gen.nfe:g} NFE", overlay)
        print(json.dumps(row))
    notes: list[str] = []
    if quality.name and args.bootstrap:
        notes = add_uncertainty(rows, quality.name, quality.bootstrap(args.bootstrap, args.seed))
        for row in rows:
            print(
                f"{_label(row)}: {quality.name} {row[quality.name]:.4g} "
                f"± {row[quality.name + '_stderr']:.2g}"
            )
        print("\n".join(notes))
    record = loaded.record()
    weights = (
        f"Weights: `{record['checkpoint']}`, step {record['step']}, "
        f"{'EMA' if record['ema'] else 'raw'}, SHA-256 `{record['weights_sha256']}`."
    )
    write_outputs(rows, quality.name, args.out, [*notes, weights], num=args.num)
    from lightning_score.training.loggers import report_to_wandb  # no-op unless W&B is in use

    plot, table = {"ablation/quality_vs_nfe": args.out / "ablation.png"}, {"ablation/results": rows}
    report_to_wandb(exp, args.out, "ablate", vars(args), images=plot, tables=table)
    print(
        f"wrote {args.out / 'ablation.csv'}, ablation.md, ablation.png and grids/ (one per setting)"
    )
    return 0
