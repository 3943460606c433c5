"""Sampling throughput (samples/s and NFE) of each sampler on the network of a config.

    python bench/sampling_throughput.py --config configs/cifar10_ncsnpp_ve.yaml \
        --batch 64 --samplers pc:reverse_diffusion:langevin:1000,ode,heun:18

Weights are random: the timing does not depend on them. Prints one JSON object per sampler, with
the device, peak memory, FLOPs per sample (network forwards times NFE) and MFU against the
device's dense bf16 peak. A sampler spec is ``pc:PREDICTOR:CORRECTOR:STEPS``, ``ode`` (adaptive)
or ``NAME:STEPS``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path

import torch
from common import Stopwatch, count_flops, device_info, mfu, peak_flops, peak_memory_gib

from lightning_score.config import SamplingConfig
from lightning_score.data import data_shape
from lightning_score.experiment import build_score_model, load_config
from lightning_score.sampling import sample
from lightning_score.training.speed import for_sampling

ROOT = Path(__file__).resolve().parents[1]


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
    p.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--samplers", default="pc:euler_maruyama:none:100,heun:10")
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU")
    p.add_argument(
        "--compile", default="none", help="torch.compile mode of the network (see lscore sample)"
    )
    p.add_argument("--bf16", action="store_true", help="the network under bf16 autocast")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (model, SDE, data)")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = load_config(args.config, args.overrides)
    shape = data_shape(config.data)
    reference = build_score_model(config).to(device).eval()
    model = for_sampling(copy.deepcopy(reference), args.compile, args.bf16)
    fast = args.compile != "none" or args.bf16
    sde = model.sde
    with torch.no_grad():
        x1, t1 = torch.rand(1, *shape, device=device), torch.full((1,), 0.5, device=device)
        flops_per_nfe = count_flops(lambda: model(x1, t1))
    peak = peak_flops(device, args.peak_tflops)
    for spec in args.samplers.split(","):
        cfg = parse_spec(spec)
        shape_b = (args.batch, *shape)
        if fast:  # compile (and autotune) outside the timing: a first, short run of the loop
            with torch.no_grad():
                sample(model, sde, shape_b, dataclasses.replace(cfg, steps=2), device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        watch = Stopwatch(device)
        watch.begin()
        with torch.no_grad():
            result = sample(model, sde, shape_b, cfg, generator=gen, device=device)
        seconds = watch.end()
        difference = None
        if fast:  # what the faster path changes: the same seeds through the float32 model
            with torch.no_grad():
                gen = torch.Generator(device=device).manual_seed(0)
                ref = sample(reference, sde, shape_b, cfg, generator=gen, device=device).samples
            delta = (sde.unscale_data(result.samples) - sde.unscale_data(ref)).abs()
            difference = {"mean_abs": float(delta.mean()), "max_abs": float(delta.max())}
        rate = args.batch / seconds
        record = {
            "benchmark": "sampling_throughput",
            **device_info(device),
            "config": Path(args.config).name,
            "overrides": args.overrides,
            "model": config.model.name,
            "batch": args.batch,
            "shape": list(shape),
            "sampling": dataclasses.asdict(cfg),
            "compile": args.compile,
            "bf16": args.bf16,
            "difference_vs_fp32_in_data_units": difference,
            "nfe": result.nfe,
            "seconds": seconds,
            "samples_per_second": rate,
            "peak_memory_gib": peak_memory_gib(device),
            "flops_per_sample": flops_per_nfe * result.nfe,
            "mfu": mfu(flops_per_nfe * result.nfe, rate, peak),
        }
        print(json.dumps(record))


if __name__ == "__main__":
    main()
