"""Memory of one power-EMA profile for each paper config, from shapes alone (no weights, no data).

    python bench/ema_memory.py                 # every paper config under configs/
    python bench/ema_memory.py configs/quickstart.yaml

A profile is a copy of what the EMA averages: every floating parameter and buffer of the module,
in the module's dtype (the parameters stay float32 under mixed precision, so the average does too;
``PowerEMA`` clones the average it is given). So each profile costs ``4 x`` that count bytes in
memory, one more copy in every checkpoint beyond the first, and a snapshot file holds all profiles
(its size here: the tensors' bytes, without the archive's few kB of headers and the config;
``ScoreModule`` adds 11 floats of loss-bin edges to the score model's tensors counted here).
Models are built on the meta device, so even the 1024-pixel config costs no memory. Prints one
JSON object.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from lightning_score.experiment import build_score_model, load_config

ROOT = Path(__file__).resolve().parents[1]
#: the configs of the papers' models (score_sde's CIFAR-10, CelebA, LSUN, CelebA-HQ; EDM)
PAPER = ("cifar10_*.yaml", "celeba*.yaml", "lsun*.yaml", "church*.yaml")
MIB = 2**20


def profile_bytes(config: Path) -> dict[str, object]:
    """Parameters, floating buffers and their bytes: what one profile copies."""
    cfg = load_config(config, ["ema.kind=power"])
    with torch.device("meta"):  # shapes only
        model = build_score_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    floating = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    nbytes = sum(t.numel() * t.element_size() for t in floating)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in floating})
    profiles = len(cfg.ema.std_rel)
    return {
        "config": config.name,
        "model": cfg.model.name,
        "parameters": params,
        "float_buffer_elements": sum(t.numel() for t in model.buffers() if t.is_floating_point()),
        "dtypes": dtypes,
        "bytes_per_profile": nbytes,
        "mib_per_profile": nbytes / MIB,
        "profiles": profiles,
        "snapshot_mib": profiles * nbytes / MIB,
    }


def main(argv: list[str]) -> None:
    configs = [Path(a) for a in argv] or sorted(
        {p for pattern in PAPER for p in (ROOT / "configs").glob(pattern)}
    )
    print(json.dumps({"benchmark": "ema_memory", "configs": [profile_bytes(c) for c in configs]}))


if __name__ == "__main__":
    main(sys.argv[1:])
