"""How long ``lscore --help`` and a command's help take in a fresh interpreter (what a user waits
for), and whether torch was imported on the way. Timing lives here, not in the tests: on a shared
machine a wall-clock assertion fails for reasons that have nothing to do with the code.

    python bench/cli_help.py --repeats 5

Prints one JSON object: the best and median seconds per help call over ``--repeats`` fresh runs.
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

ROOT = Path(__file__).resolve().parents[1]
CODE = (
    "import sys\n"
    "from lightning_score.cli import main\n"
    "try: main(sys.argv[1:])\n"
    "except SystemExit: pass\n"
    "print('torch imported:', 'torch' in sys.modules)\n"
)


def seconds_of(argv: list[str]) -> tuple[float, bool]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CODE, *argv], capture_output=True, text=True, env=env, check=True
    )
    return time.perf_counter() - start, "torch imported: True" in out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result: dict[str, object] = {"repeats": args.repeats, "cpus": os.cpu_count()}
    for name, argv in (
        ("lscore --help", ["--help"]),
        ("lscore evaluate --help", ["evaluate", "--help"]),
    ):
        runs = [seconds_of(argv) for _ in range(args.repeats)]
        times = [s for s, _ in runs]
        result[name] = {
            "best_s": round(min(times), 3),
            "median_s": round(statistics.median(times), 3),
            "torch_imported": any(imported for _, imported in runs),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
