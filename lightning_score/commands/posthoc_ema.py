"""``lscore posthoc-ema RUN_DIR --std-rel 0.08 --out FILE``: the EMA of another width, after training.

A run trained with ``ema.kind=power`` stores snapshots of its power-function EMAs
(``RUN_DIR/ema_snapshots/``). This combines them by least squares (EDM2, Karras et al. 2024) into the
EMA of any width ``--std-rel`` at the last snapshot's step, and writes a checkpoint that every
command takes (its EMA weights are the reconstruction; raw weights and config are the run's).
``--std-rel LO:HI:N`` writes N widths into the folder ``--out``. An EMA sweep then costs
evaluation only.

``--metric fid|swd`` then scores every width on the same seeds (the checkpoint's sampler, ``--num``
samples), beside the EMA the run kept while training and an optional ``--baseline`` checkpoint
(e.g. the same config trained with a constant decay), with paired bootstrap standard errors as
``lscore ablate`` computes them; writes ``posthoc_ema.csv``, ``.md`` and ``.png`` (the metric
against std_rel) into ``--out`` and logs them to W&B when the run logs there.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_score.commands.options import count, number
from lightning_score.outputs import add_overwrite_argument, check_outputs

if TYPE_CHECKING:
    from lightning_score.training.checkpoint import LoadedModel

REPORT = ("posthoc_ema.csv", "posthoc_ema.md", "posthoc_ema.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="run directory of an ema.kind=power training")
    parser.add_argument(
        "--std-rel", required=True, help="a width (0.08) or a family lo:hi:count (0.02:0.20:10)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="the checkpoint (.ckpt) or, for a family, a folder"
    )
    score = parser.add_argument_group("scoring a family (the metric against std_rel)")
    score.add_argument(
        "--metric",
        choices=["none", "fid", "swd"],
        default="none",
        help="score every width: FID (with --ref-stats) or the sliced Wasserstein distance to "
        "the data (lscore ablate's cheap proxy); none: only write the checkpoints",
    )
    score.add_argument("--num", type=count, default=500, help="samples per width (same seeds)")
    score.add_argument(
        "--ref-stats", type=Path, default=None, help="reference stats .npz for --metric fid"
    )
    score.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkpoint scored beside them (its EMA), e.g. the run with ema.kind=exponential",
    )
    score.add_argument(
        "--bootstrap", type=number(int, at_least=2), default=200, help="paired bootstrap replicates"
    )
    score.add_argument("--seed", type=int, default=0, help="base seed of the sampler's noise")
    score.add_argument("--batch-size", type=count, default=250, help="samples per sampler batch")
    score.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the GPU)")
    add_overwrite_argument(parser)


def outputs(args: argparse.Namespace, widths: list[float]) -> list[Path]:
    if len(widths) == 1:
        return [args.out]
    return [args.out / f"std_rel_{w:.4f}.ckpt" for w in widths]


def run(args: argparse.Namespace) -> int:
    from lightning_score.training.posthoc_ema import parse_widths

    widths = parse_widths(args.std_rel)
    paths = outputs(args, widths)
    if args.metric != "none" and len(widths) < 2:
        raise ValueError("--metric scores a family: give --std-rel lo:hi:count")
    if args.metric == "fid" and args.ref_stats is None:
        raise ValueError("--metric fid needs --ref-stats FILE.npz (make one with `lscore stats`)")
    report = [args.out / name for name in REPORT] if args.metric != "none" else []
    snapshot_dir = args.run_dir / "ema_snapshots"
    check_outputs([*paths, *report], args.overwrite, inputs=sorted(snapshot_dir.glob("*.pt")))

    import torch

    from lightning_score.outputs import atomic_path
    from lightning_score.training.checkpoint import find_resume_checkpoint, load_checkpoint
    from lightning_score.training.posthoc_ema import check_width, load_snapshots, with_posthoc_ema

    snapshots = load_snapshots(args.run_dir)
    for width in widths:  # a family is refused whole, before anything is written
        check_width(snapshots, width)
    base = find_resume_checkpoint(args.run_dir)
    if base is None:
        raise ValueError(f"{args.run_dir} has no checkpoint that verifies to take the config from")
    ckpt = load_checkpoint(base.path)
    for width, path in zip(widths, paths, strict=True):
        made = with_posthoc_ema(ckpt, snapshots, width)
        with atomic_path(path) as tmp:
            torch.save(made, tmp)
        print(
            f"std_rel {width:.4f} at step {snapshots[-1].step} from {len(snapshots)} snapshots "
            f"(relative residual {made['posthoc_ema']['residual']:.1e}) -> {path}"
        )
    if args.metric != "none":
        score_family(args, widths, paths, base.path)
    return 0


def score_family(
    args: argparse.Namespace, widths: list[float], paths: list[Path], trained: Path
) -> None:
    """Every width, the run's own EMA and the baseline, sampled on the same seeds and scored."""
    from lightning_score.commands.ablate import Quality
    from lightning_score.commands.sample import resolve_device
    from lightning_score.data import data_shape
    from lightning_score.images import to_data_space
    from lightning_score.sampling.generate import generate
    from lightning_score.training.checkpoint import load_model

    device = resolve_device(args.device)
    first = load_model(paths[0], map_location=device)
    exp = first.config
    kept = f"training EMA (std_rel {exp.ema.std_rel[0]:g})"
    arms: list[tuple[str, float | None, Path]] = [
        *((f"std_rel {w:.3f}", w, p) for w, p in zip(widths, paths, strict=True)),
        (kept, None, trained),
    ]
    if args.baseline is not None:
        arms.append((f"baseline {Path(*args.baseline.parts[-3:])}", None, args.baseline))
    quality = Quality(args, exp, device)
    rows: list[dict[str, Any]] = []
    for label, width, path in arms:
        loaded: LoadedModel = first if path == paths[0] else load_model(path, map_location=device)
        gen = generate(
            loaded.model, loaded.model.sde, data_shape(loaded.config.data), loaded.config.sampling,
            num=args.num, batch_size=args.batch_size, seed=args.seed, device=device,
            progress=True, desc=label,
        )  # fmt: skip
        value = quality(to_data_space(loaded.model.sde, gen.samples), args.batch_size)
        rows.append({"arm": label, "std_rel": width, quality.name: value, "nfe": gen.nfe,
                     "weights_sha256": loaded.sha256})  # fmt: skip
        print(f"{label}: {quality.name} {value:.4g}")
    boot = quality.bootstrap(args.bootstrap, args.seed)
    notes = _add_noise(rows, quality.name, boot)
    _write_report(rows, quality.name, args, notes)
    from lightning_score.training.loggers import report_to_wandb  # no-op unless W&B is in use

    best = min((r for r in rows if r["std_rel"] is not None), key=lambda r: r[quality.name])
    summary = {f"best_{quality.name}": best[quality.name], "best_std_rel": best["std_rel"]}
    report_to_wandb(
        exp, args.out, "posthoc-ema", {"run_dir": str(args.run_dir), "num": args.num}, summary,
        images={"posthoc_ema/metric_vs_std_rel": args.out / "posthoc_ema.png"},
        tables={"posthoc_ema/results": rows},
    )  # fmt: skip


def _add_noise(rows: list[dict[str, Any]], name: str, boot: Any) -> list[str]:
    """Standard errors into ``rows`` and which arms are within noise of the best width."""
    from lightning_score.evaluation.uncertainty import LEVEL

    for row, se in zip(rows, boot.stderr().tolist(), strict=True):
        row[f"{name}_stderr"] = se
    widths = [i for i, r in enumerate(rows) if r["std_rel"] is not None]
    best = min(widths, key=lambda i: rows[i][name])
    for i, row in enumerate(rows):
        row["within_noise_of_best"] = i == best or boot.within_noise(i, best)
    same = [
        rows[i]["arm"] for i in range(len(rows)) if i != best and rows[i]["within_noise_of_best"]
    ]
    rule = f"the {LEVEL:.0%} paired bootstrap interval of the difference contains 0"
    lines = [f"Best width: {rows[best]['arm']} ({name} {rows[best][name]:.4g})."]
    lines.append(f"Within noise of it ({rule}): {', '.join(same) or 'none'}.")
    return lines


def _write_report(
    rows: list[dict[str, Any]], name: str, args: argparse.Namespace, notes: list[str]
) -> None:
    from lightning_score.outputs import atomic_path, write_text

    columns = ["arm", "std_rel", name, f"{name}_stderr", "within_noise_of_best", "nfe"]
    with atomic_path(args.out / "posthoc_ema.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"| arm | {name} ± se | within noise of the best |", "|---|---|---|"]
    for r in rows:
        noise = "yes" if r["within_noise_of_best"] else ""
        lines.append(f"| {r['arm']} | {r[name]:.4g} ± {r[name + '_stderr']:.2g} | {noise} |")
    write_text(args.out / "posthoc_ema.md", "\n".join([*lines, "", *notes]) + "\n")
    fig = width_figure(rows, name, args.num)
    with atomic_path(args.out / "posthoc_ema.png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)


def width_figure(rows: list[dict[str, Any]], name: str, num: int):
    """The metric against std_rel with ±1 se bars; the other arms as lines with ±1 se bands. An
    arm far outside the widths' range (a baseline several times worse) is named at the edge
    instead of drawn, so that it does not flatten the curve the figure is for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    pts = sorted((r["std_rel"], r[name], r[f"{name}_stderr"]) for r in rows if r["std_rel"])
    x, y, se = zip(*pts, strict=True)
    ax.errorbar(x, y, yerr=se, marker="o", capsize=3, label="post-hoc EMA")
    span = max(max(y) - min(y), 1e-12)
    lo, hi = min(y) - 2 * span, max(y) + 2 * span
    for i, row in enumerate(r for r in rows if r["std_rel"] is None):
        value, err = row[name], row[f"{name}_stderr"]
        color = f"C{i + 1}"
        if lo <= value <= hi:
            ax.axhline(value, color=color, linestyle="--", label=row["arm"])
            ax.axhspan(value - err, value + err, color=color, alpha=0.15)
        else:
            edge, where = (0.98, "top") if value > hi else (0.02, "bottom")
            ax.annotate(f"{row['arm']}: {value:.4g} ± {err:.2g} (off the scale)",
                        (0.02, edge), xycoords="axes fraction", va=where, fontsize=7, color=color)  # fmt: skip
    ax.set_xlabel("std_rel (EMA width relative to training length)")
    ax.set_ylabel(f"{name} (± 1 bootstrap se)")
    ax.set_title(f"{name} against the EMA width, {num} samples per arm (same seeds)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig
