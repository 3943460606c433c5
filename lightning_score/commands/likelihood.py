"""``lscore likelihood CKPT --split test --repeats 5``: bits/dim through the probability-flow ODE.

Each repeat draws fresh uniform dequantization noise and fresh Hutchinson probes (the official
protocol: 5 repeats on the test set). Prints the mean with two standard errors: over data points
(what differs between test sets) and from the estimator alone (dequantization and probes). For
2-D toy data the points are continuous: no dequantization, and the NLL in nats is printed too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from lightning_score.commands.sample import resolve_device
from lightning_score.likelihood import TRACE_ESTIMATORS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a training checkpoint (.ckpt)")
    parser.add_argument("--split", choices=["train", "test"], default="test")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num", type=int, default=None, help="first N points (default: all)")
    parser.add_argument("--trace", choices=TRACE_ESTIMATORS, default="rademacher")
    parser.add_argument(
        "--eps",
        type=float,
        default=None,
        help="integrate the ODE from eps to T (default: the smallest training time, loss.eps: "
        "1e-5 for the paper's SDEs as officially, 0.002 for EDM)",
    )
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")


def run(args: argparse.Namespace) -> int:
    from lightning_score.checkpoint import load_score_model
    from lightning_score.data import build_datamodule
    from lightning_score.likelihood import evaluate_bits_per_dim

    device = resolve_device(args.device)
    model, exp = load_score_model(args.checkpoint, ema=args.ema, map_location=device)
    model.requires_grad_(False)
    dm = build_datamodule(dataclasses.replace(exp.data, random_flip=False), exp.seed)
    dm.setup()
    dataset = dm.train_set if args.split == "train" else dm.val_set
    if args.num is not None:
        dataset = Subset(dataset, range(min(args.num, len(dataset))))

    def batches() -> Iterator[Tensor]:
        for batch in DataLoader(dataset, batch_size=args.batch_size, shuffle=False):
            yield (batch[0] if isinstance(batch, (list, tuple)) else batch).to(device)

    result = evaluate_bits_per_dim(
        model,
        model.sde,
        batches,
        repeats=args.repeats,
        images=dm.is_image,
        trace=args.trace,
        generator=torch.Generator(device=device).manual_seed(args.seed),
        eps=exp.loss.eps if args.eps is None else args.eps,
        rtol=args.rtol,
        atol=args.atol,
    )
    dim = math.prod(dm.data_shape)
    estimator_se = result.estimator_stderr  # NaN for a single repeat
    report = {
        "checkpoint": str(args.checkpoint),
        "ema": args.ema,
        "split": args.split,
        "points": result.values.shape[1],
        "repeats": args.repeats,
        "trace": args.trace,
        "bpd": result.mean,
        "bpd_stderr": result.stderr,
        "bpd_estimator_stderr": None if math.isnan(estimator_se) else estimator_se,
        "nfe": result.nfe,
    }
    spread = "n/a with 1 repeat" if math.isnan(estimator_se) else f"± {estimator_se:.4f}"
    line = (
        f"{exp.data.name} {args.split}: {result.mean:.4f} ± {result.stderr:.4f} bits/dim "
        f"(estimator {spread}; {report['points']} points x {args.repeats} repeats, "
        f"{args.trace} trace, {result.nfe:.0f} NFE per solve)"
    )
    if not dm.is_image:
        report["nll_nats"] = result.mean * dim * math.log(2)
        line += f"; NLL {report['nll_nats']:.4f} nats per point"
    print(line)
    out = (
        args.out
        or args.checkpoint.parent / "eval" / f"{args.checkpoint.stem}_bpd_{args.split}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"-> {out}")
    return 0
