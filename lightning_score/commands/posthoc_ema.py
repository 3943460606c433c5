"""``lscore posthoc-ema RUN_DIR --std-rel 0.08 --out FILE``: the EMA of another width, after training.

A run trained with ``ema.kind=power`` stores snapshots of its power-function EMAs
(``RUN_DIR/ema_snapshots/``). This combines them by least squares (EDM2, Karras et al. 2024) into the
EMA of any width ``--std-rel`` at the last snapshot's step, and writes a checkpoint that every
command takes (its EMA weights are the reconstruction; raw weights and config are the run's).
``--std-rel LO:HI:N`` writes N widths into the folder ``--out``. An EMA sweep then costs
evaluation only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_score.outputs import add_overwrite_argument, check_outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="run directory of an ema.kind=power training")
    parser.add_argument(
        "--std-rel", required=True, help="a width (0.08) or a family lo:hi:count (0.02:0.20:10)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="the checkpoint (.ckpt) or, for a family, a folder"
    )
    add_overwrite_argument(parser)


def outputs(args: argparse.Namespace, widths: list[float]) -> list[Path]:
    if len(widths) == 1:
        return [args.out]
    return [args.out / f"std_rel_{w:.4f}.ckpt" for w in widths]


def run(args: argparse.Namespace) -> int:
    from lightning_score.training.posthoc_ema import parse_widths

    widths = parse_widths(args.std_rel)
    paths = outputs(args, widths)
    snapshot_dir = args.run_dir / "ema_snapshots"
    check_outputs(paths, args.overwrite, inputs=sorted(snapshot_dir.glob("*.pt")))

    import torch

    from lightning_score.outputs import atomic_path
    from lightning_score.training.checkpoint import find_resume_checkpoint, load_checkpoint
    from lightning_score.training.posthoc_ema import load_snapshots, reconstruct

    snapshots = load_snapshots(args.run_dir)
    base = find_resume_checkpoint(args.run_dir)
    if base is None:
        raise ValueError(f"{args.run_dir} has no checkpoint that verifies to take the config from")
    ckpt = load_checkpoint(base.path)
    ckpt.pop("power_ema", None)  # the profiles of the run: not part of a reconstruction
    for width, path in zip(widths, paths, strict=True):
        state, found = reconstruct(snapshots, width)
        ckpt["state_dict"] = {**ckpt["state_dict"], **state}
        ckpt["posthoc_ema"] = {
            "std_rel": width,
            "step": snapshots[-1].step,
            "snapshots": [s.path.name for s in snapshots],
            "coefficients": found.coefficients.tolist(),
            "residual": found.residual,
        }
        with atomic_path(path) as tmp:
            torch.save(ckpt, tmp)
        print(
            f"std_rel {width:.4f} at step {snapshots[-1].step} from {len(snapshots)} snapshots "
            f"(relative residual {found.residual:.1e}) -> {path}"
        )
    return 0
