"""What naming the weights costs on every load: :func:`weights_digest` (SHA-256 of the weights,
recorded in every sample / evaluate / likelihood / ablate output) and :func:`export_checksum`
(verified on every load of an export), for a model of a given size.

    python bench/weights_digest.py --params 62e6     # the CIFAR-10 NCSN++ (continuous, VE)

Times each on float32 weights already in memory (as after ``torch.load``), best of ``--repeats``.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import device_info

from lightning_score.training.checkpoint import export_checksum, weights_digest


def best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=float, default=62e6, help="float32 parameters")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    params, size = int(args.params), 4_000_000
    sizes = [size] * (params // size) + ([params % size] if params % size else [])
    state = {f"net.w{i}": torch.randn(n) for i, n in enumerate(sizes)}
    meta = {"format": "lightning-score", "config": "{}", "weights": "ema", "step": "1"}
    digest = best_seconds(lambda: weights_digest(state), args.repeats)
    checksum = best_seconds(lambda: export_checksum(state, meta), args.repeats)
    gigabytes = params * 4 / 1e9
    print(
        json.dumps(
            {
                "bench": "weights_digest",
                "params": params,
                "gigabytes": gigabytes,
                "digest_s": digest,
                "digest_gb_per_s": gigabytes / digest,
                "export_checksum_s": checksum,
                **device_info(torch.device("cpu")),
            }
        )
    )


if __name__ == "__main__":
    main()
