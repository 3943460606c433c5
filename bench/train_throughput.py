"""Training throughput (images/s) of a network preset: forward + backward + Adam step.

    python bench/train_throughput.py --model ncsnpp_cifar10 --batch 128 --size 32 --channels 3 \
        --sde vesde --precision bf16 --steps 20

Prints one JSON object with the device, the settings and the measured rate.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from lightning_score.losses import dsm_loss, uniform_times
from lightning_score.nets import ScoreModel, build_network
from lightning_score.sde import SDES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="unet")
    p.add_argument("--sde", default="vpsde", choices=sorted(SDES))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=8)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sde = SDES[args.sde]()
    shape = (args.channels, args.size, args.size)
    model = ScoreModel(build_network(args.model, shape, sde), sde).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if args.compile else model
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    x = torch.rand(args.batch, *shape, device=device) * 2 - 1
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=args.precision == "bf16"):
            times = uniform_times(sde, args.batch, 1e-5, device)
            loss = dsm_loss(step_model, sde, x, times).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "benchmark": "train_throughput",
                "device": torch.cuda.get_device_name()
                if device.type == "cuda"
                else platform.processor() or "cpu",
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                **vars(args),
                "params": sum(p.numel() for p in model.parameters()),
                "seconds_per_step": seconds / args.steps,
                "images_per_second": args.batch * args.steps / seconds,
                "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30
                if device.type == "cuda"
                else None,
            }
        )
    )


if __name__ == "__main__":
    main()
