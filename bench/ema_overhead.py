"""Step-time cost of power-function EMAs against the exponential EMA, through train_throughput.py.

    python bench/ema_overhead.py --rounds 3 --steps 100 --warmup 10

Runs ``bench/train_throughput.py`` once per arm and round, alternating the arms (exponential,
power, exponential, power, ...) so that a drift of the machine's load hits both alike, each run in
a fresh process. Arms: ``exponential`` (the config's one constant-decay EMA) and ``power``
(``ema.kind=power ema.std_rel=[0.05,0.10]``: two profiles). In each run the plain loop makes the
same EMA updates as the framework (one ``foreach`` lerp per profile), so ``framework_over_plain``
is the framework's own cost with that EMA; ``power_over_exponential`` compares the framework's
step times across arms (the extra profile's arithmetic included). Prints one JSON object with
every run and the medians per arm.

On a loaded machine whole runs drift by more than the 3 % this is about, so the EMA updates are
also timed on their own, in this process, interleaved call by call (``update_ms``): the
framework's ``EMA.update`` and ``PowerEMA.update`` on the config's ``ScoreModule`` against the
plain loop's one and two ``foreach`` lerps over its parameters. The difference of the framework's
and the plain loop's added cost, over the step time, is how much the power arm can move
``framework_over_plain`` (``ratio_change_from_updates``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ARMS = {
    "exponential": ["ema.kind=exponential"],
    "power": ["ema.kind=power", "ema.std_rel=[0.05,0.10]"],
}


def run_arm(args: argparse.Namespace, arm: str) -> dict[str, Any]:
    command = [
        sys.executable,
        str(HERE / "train_throughput.py"),
        "--config",
        args.config,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--no-flops",
        *ARMS[arm],
        *args.overrides,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise SystemExit(f"{arm}: train_throughput.py failed\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over one arm's runs (the machine is shared: single runs are noisy)."""
    return {
        "framework_over_plain": statistics.median(r["framework_over_plain"] for r in runs),
        "framework_seconds_per_step": statistics.median(
            r["framework"]["seconds_per_step"] for r in runs
        ),
        "plain_seconds_per_step": statistics.median(r["plain"]["seconds_per_step"] for r in runs),
        "ema_callback_ms_per_step": statistics.median(
            sum(v for k, v in r["framework"]["callback_ms_per_step"].items() if "EMA" in k)
            for r in runs
        ),
        "host_syncs_per_step": [r["framework"]["host_syncs"]["per_step"] for r in runs],
    }


def update_times(config: str, rounds: int, calls: int) -> dict[str, float]:
    """Median milliseconds per EMA update of each arm, the arms interleaved round by round."""
    import torch

    from lightning_score.experiment import load_config
    from lightning_score.training.ema import EMA, PowerEMA
    from lightning_score.training.module import ScoreModule
    from lightning_score.training.posthoc_ema import gamma_from_std_rel, power_beta

    cfg = load_config(config, [])
    module = ScoreModule.from_config(cfg)
    exponential, power = EMA(cfg.ema.decay), PowerEMA([0.05, 0.10])
    for ema in (exponential, power):
        ema.setup(None, module, "fit")  # type: ignore[arg-type]
        ema.on_fit_start(None, module)  # type: ignore[arg-type]
        ema.update()  # the first update copies; time the steady state
    params = list(module.parameters())
    plain = [[p.detach().clone() for p in params] for _ in range(2)]
    gammas = [gamma_from_std_rel(0.05), gamma_from_std_rel(0.10)]
    count = [1]

    def plain_lerps(n: int) -> None:
        count[0] += 1
        for gamma, average in zip(gammas[:n], plain[:n], strict=True):
            decay = power_beta(count[0], gamma) if n == 2 else cfg.ema.decay
            torch._foreach_lerp_(average, params, 1.0 - decay)

    arms = {
        "framework_exponential": exponential.update,
        "framework_power": power.update,
        "plain_one_lerp": lambda: plain_lerps(1),
        "plain_two_lerps": lambda: plain_lerps(2),
    }
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    with torch.no_grad():
        for _ in range(rounds):
            for arm, update in arms.items():
                start = time.perf_counter()
                for _ in range(calls):
                    update()
                times[arm].append(1e3 * (time.perf_counter() - start) / calls)
    return {arm: statistics.median(t) for arm, t in times.items()}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(HERE.parent / "configs" / "quickstart.yaml"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--update-rounds", type=int, default=200, help="0: no update timing")
    p.add_argument("overrides", nargs="*", help="config overrides for both arms, key=value")
    args = p.parse_args(argv)
    updates = update_times(args.config, args.update_rounds, 5) if args.update_rounds else None
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for _ in range(args.rounds):
        for arm in ARMS:  # alternating: exponential, power, exponential, power, ...
            runs[arm].append(run_arm(args, arm))
    medians = {arm: summary(r) for arm, r in runs.items()}
    exp, power = medians["exponential"], medians["power"]
    record = {
        "benchmark": "ema_overhead",
        "config": Path(args.config).name,
        "rounds": args.rounds,
        "steps": args.steps,
        "warmup": args.warmup,
        "overrides": args.overrides,
        "load_average": os.getloadavg(),
        "medians": medians,
        "ratio_change": power["framework_over_plain"] / exp["framework_over_plain"] - 1.0,
        "power_over_exponential": power["framework_seconds_per_step"]
        / exp["framework_seconds_per_step"],
        "update_ms": updates,
        "ratio_change_from_updates": None
        if updates is None
        else -(
            (updates["framework_power"] - updates["plain_two_lerps"])
            - (updates["framework_exponential"] - updates["plain_one_lerp"])
        )
        / (1e3 * exp["framework_seconds_per_step"]),
        "runs": {
            arm: [
                {
                    "framework_over_plain": r["framework_over_plain"],
                    "framework_seconds_per_step": r["framework"]["seconds_per_step"],
                    "plain_seconds_per_step": r["plain"]["seconds_per_step"],
                }
                for r in rs
            ]
            for arm, rs in runs.items()
        },
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1:])
