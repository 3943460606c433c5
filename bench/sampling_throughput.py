"""Sampling throughput (samples/s and NFE) of each sampler on a network preset.

    python bench/sampling_throughput.py --model ncsnpp_cifar10 --sde vesde --size 32 --channels 3 \
        --batch 64 --samplers pc:reverse_diffusion:langevin:1000,ode,heun:18

Weights are random: the timing does not depend on them. Prints one JSON object per sampler.
A sampler spec is ``pc:PREDICTOR:CORRECTOR:STEPS``, ``ode`` (adaptive) or ``NAME:STEPS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time

import torch

from lightning_score.config import SamplingConfig
from lightning_score.nets import ScoreModel, build_network
from lightning_score.sampling import sample
from lightning_score.sde import SDES


def parse_spec(spec: str) -> SamplingConfig:
    parts = spec.split(":")
    if parts[0] == "pc":
        _, predictor, corrector, steps = parts
        return SamplingConfig(
            sampler="pc", predictor=predictor, corrector=corrector, steps=int(steps)
        )
    if parts[0] == "ode":
        return SamplingConfig(sampler="ode")
    return SamplingConfig(sampler=parts[0], steps=int(parts[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="unet")
    p.add_argument("--sde", default="vpsde", choices=sorted(SDES))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=8)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--samplers", default="pc:euler_maruyama:none:100,heun:10")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sde = SDES[args.sde]()
    shape = (args.channels, args.size, args.size)
    model = ScoreModel(build_network(args.model, shape, sde), sde).to(device).eval()
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    for spec in args.samplers.split(","):
        cfg = parse_spec(spec)
        gen = torch.Generator(device=device).manual_seed(0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            result = sample(model, sde, (args.batch, *shape), cfg, generator=gen, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        record = {
            "benchmark": "sampling_throughput",
            "device": name,
            "threads": torch.get_num_threads(),
            "model": args.model,
            "batch": args.batch,
            "shape": list(shape),
            "sampling": dataclasses.asdict(cfg),
            "nfe": result.nfe,
            "seconds": seconds,
            "samples_per_second": args.batch / seconds,
        }
        print(json.dumps(record))


if __name__ == "__main__":
    main()
