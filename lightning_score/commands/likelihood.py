"""``lscore likelihood CKPT --split test --repeats 5``: bits/dim through the probability-flow ODE.

Each repeat draws fresh uniform dequantization noise and fresh Hutchinson probes (the official
protocol: 5 repeats on the test set). Prints the mean with two standard errors: over data points
(what differs between test sets) and from the estimator alone (dequantization and probes). For
2-D toy data the points are continuous: no dequantization, and the NLL in nats is printed too.

Under ``torchrun --nproc_per_node N -m lightning_score.cli likelihood ...`` each rank solves its
share of the batches and the ranks gather their bits/dim once, at the end: the result equals one
process's (each point's dequantization and probes are seeded by its index, not by its rank).
An existing result file is kept unless ``--overwrite`` is given. The data are the checkpoint's
data config; where they lie on this machine, ``--data-root DIR`` or ``--override data.KEY=VALUE``
(e.g. ``data.download=true``) say; an override that changes the model's input shape is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lightning_score.commands.options import positive
from lightning_score.commands.sample import check_positive, resolve_device
from lightning_score.outputs import add_overwrite_argument, check_outputs, write_text

if TYPE_CHECKING:
    from torch import Tensor

    from lightning_score.evaluation.distributed import Ranks

#: lightning_score.evaluation.likelihood.TRACE_ESTIMATORS, named here so that `--help` needs no torch
TRACE_CHOICES = ("rademacher", "gaussian", "exact")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", type=Path, help="a training checkpoint (.ckpt) or an export folder"
    )
    parser.add_argument(
        "--override",
        dest="overrides",
        action="append",
        default=[],
        metavar="data.KEY=VALUE",
        help="a change to the checkpoint's data config, e.g. data.download=true (repeatable)",
    )
    parser.add_argument(
        "--data-root", default=None, help="where the data set lies here (data.root)"
    )
    parser.add_argument(
        "--split", choices=["train", "test"], default="test", help="data split to score"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="passes over the data, each with fresh dequantization noise and trace probes",
    )
    parser.add_argument(
        "--num",
        "--num-points",  # under torchrun, whose parser takes --num for its --numa-binding
        dest="num",
        type=int,
        default=None,
        help="first N points (default: all)",
    )
    parser.add_argument(
        "--trace",
        choices=TRACE_CHOICES,
        default="rademacher",
        help="divergence: Hutchinson-Skilling with Rademacher or Gaussian probes, or exact "
        "(one backward pass per dimension: small data only)",
    )
    parser.add_argument(
        "--eps",
        type=positive,
        default=None,
        help="integrate the ODE from eps to T (default: the smallest training time, loss.eps: "
        "1e-5 for the paper's SDEs as officially, 0.002 for EDM)",
    )
    parser.add_argument("--rtol", type=positive, default=1e-5, help="ODE relative tolerance")
    parser.add_argument("--atol", type=positive, default=1e-5, help="ODE absolute tolerance")
    parser.add_argument("--batch-size", type=int, default=128, help="points per ODE solve")
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="EMA weights (--no-ema: the raw ones)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and probes")
    parser.add_argument(
        "--device", default=None, help="cpu, cuda ... (default: this rank's GPU if any, else cpu)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON file for the results (default: eval/<checkpoint>_bpd_<split>.json beside it)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bar over the points (in a log file: a line every 30 s)",
    )
    add_overwrite_argument(parser)


def data_overrides(args: argparse.Namespace) -> list[str]:
    """``--data-root`` and the ``data.*`` overrides as one dotlist; any other key is refused (the
    model's config is the checkpoint's)."""
    other = [o for o in args.overrides if not o.startswith("data.")]
    if other:
        raise ValueError(
            f"{' '.join(other)}: likelihood takes data.KEY=VALUE overrides only (the model's "
            "config comes from the checkpoint), e.g. data.root=DIR or data.download=true"
        )
    return [*args.overrides, *([f"data.root={args.data_root}"] if args.data_root else [])]


def run(args: argparse.Namespace) -> int:
    from lightning_score.evaluation.distributed import process_group

    with process_group() as ranks:
        return _run(args, ranks)


def _run(args: argparse.Namespace, ranks: Ranks) -> int:
    import torch
    from torch.utils.data import DataLoader, Subset

    from lightning_score.data import DataNotFoundError, build_datamodule, data_shape
    from lightning_score.evaluation.distributed import shard_batches
    from lightning_score.evaluation.likelihood import evaluate_bits_per_dim, gather_bits_per_dim
    from lightning_score.experiment import with_overrides
    from lightning_score.training.checkpoint import load_model

    check_positive("--num", args.num, "a positive number of points")
    check_positive("--repeats", args.repeats)
    check_positive("--batch-size", args.batch_size)
    overrides = data_overrides(args)
    if args.device:
        resolve_device(args.device)  # refuses, in one line, a device this machine lacks
    device = ranks.device(args.device)
    out = (
        args.out
        or args.checkpoint.parent / "eval" / f"{args.checkpoint.stem}_bpd_{args.split}.json"
    )
    check_outputs([out], args.overwrite, inputs=[args.checkpoint])  # on every rank: all refuse
    loaded = load_model(args.checkpoint, ema=args.ema, map_location=device)
    model, exp = loaded.model, loaded.config
    model.requires_grad_(False)
    if overrides:
        shape = data_shape(exp.data)
        exp = with_overrides(exp, overrides)
        if data_shape(exp.data) != shape:
            raise ValueError(
                f"{' '.join(overrides)}: the data would be of shape {data_shape(exp.data)}, the "
                f"model takes {shape}; change only where the data lie (data.root, data.download)"
            )
    try:
        dm = build_datamodule(dataclasses.replace(exp.data, random_flip=False), exp.seed)
        dm.setup()
    except DataNotFoundError as err:  # its advice names config keys: say how to set them here
        raise DataNotFoundError(
            f"{err} (here: --data-root DIR, or --override data.KEY=VALUE)"
        ) from None
    dataset = dm.train_set if args.split == "train" else dm.val_set
    num = len(dataset) if args.num is None else min(args.num, len(dataset))
    mine = shard_batches(num, args.batch_size, ranks)

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        loader = DataLoader(Subset(dataset, mine), batch_size=args.batch_size, shuffle=False)
        for b, batch in enumerate(loader):
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            yield (
                torch.tensor(mine[b * args.batch_size : b * args.batch_size + len(x)]),
                x.to(device),
            )

    local = evaluate_bits_per_dim(
        model,
        model.sde,
        batches,
        repeats=args.repeats,
        images=dm.is_image,
        trace=args.trace,
        seed=args.seed,
        eps=exp.loss.eps if args.eps is None else args.eps,
        rtol=args.rtol,
        atol=args.atol,
        progress=args.progress and ranks.rank == 0,
        num_points=len(mine),
    )
    result = gather_bits_per_dim(local)  # the one collective, after every solve
    if ranks.rank != 0:
        return 0
    dim = math.prod(dm.data_shape)
    estimator_se = result.estimator_stderr  # NaN for a single repeat
    report = {
        **loaded.record(),
        "split": args.split,
        "points": result.values.shape[1],
        "repeats": args.repeats,
        "trace": args.trace,
        "bpd": result.mean,
        "bpd_stderr": result.stderr,
        "bpd_estimator_stderr": None if math.isnan(estimator_se) else estimator_se,
        "nfe": result.nfe,
        "world_size": ranks.world_size,
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
    write_text(out, json.dumps(report, indent=2))
    print(f"-> {out}")
    return 0
