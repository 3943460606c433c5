"""What verifying a checkpoint's CRC-32s costs next to loading it, for a training checkpoint of a
given model size (EMA and raw weights plus Adam's two moments: 4 x 4 bytes per parameter).

    python bench/checkpoint_verify.py --params 100e6 --dir /tmp

Writes one checkpoint with ``torch.save`` (``--dir``: on the disk you train on), then times, with
the file in the page cache as it is right after a save or a first read: the checksum pass
(``verify_checkpoint``), a full ``torch.load(weights_only=True)``, and the metadata read
(``mmap=True``) that picks the resume candidate. Prints one JSON object; the file is removed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from lightning_score.training.checkpoint import load_checkpoint, verify_checkpoint


def fake_checkpoint(params: int, tensor_size: int = 4_000_000) -> dict:
    """Lightning's layout with ``params`` float32 parameters in tensors of ``tensor_size``."""
    sizes = [tensor_size] * (params // tensor_size) + (
        [params % tensor_size] if params % tensor_size else []
    )
    weights = {f"score_model.w{i}": torch.randn(n) for i, n in enumerate(sizes)}
    return {
        "state_dict": weights,
        "current_model_state": {k: v.clone() for k, v in weights.items()},
        "optimizer_states": [
            {
                "state": {
                    i: {"exp_avg": torch.randn(n), "exp_avg_sq": torch.rand(n)}
                    for i, n in enumerate(sizes)
                }
            }
        ],
        "global_step": 1,
    }


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=float, default=100e6, help="model parameters")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    ckpt = fake_checkpoint(int(args.params))
    fd, name = tempfile.mkstemp(suffix=".ckpt", dir=args.dir)
    os.close(fd)
    path = Path(name)
    try:
        start = time.perf_counter()
        torch.save(ckpt, path)
        save_s = time.perf_counter() - start
        del ckpt
        size = path.stat().st_size
        verify_s = timed(lambda: verify_checkpoint(path), args.repeats)
        load_s = timed(lambda: torch.load(path, weights_only=True), args.repeats)
        meta_s = timed(lambda: load_checkpoint(path, mmap=True, verify=False), args.repeats)
    finally:
        path.unlink(missing_ok=True)
    print(
        json.dumps(
            {
                "bench": "checkpoint_verify",
                "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "params": int(args.params),
                "file_gb": round(size / 1e9, 3),
                "save_s": round(save_s, 3),
                "verify_crc32_s": round(verify_s, 3),
                "verify_gb_per_s": round(size / 1e9 / verify_s, 2),
                "torch_load_s": round(load_s, 3),
                "metadata_mmap_s": round(meta_s, 4),
                "note": "page-cache warm; CPU only; verify is the added cost of a checked load",
            }
        )
    )


if __name__ == "__main__":
    main()
