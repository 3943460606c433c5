"""Seeds for batched, multi-process sampling: one independent noise stream per (seed, rank, batch).

Samplers draw all their noise from a ``torch.Generator``, so a seed fixes the samples. When many
batches are generated on many ranks, each (base seed, rank, batch index) gets its own seed through
NumPy's ``SeedSequence`` (built for exactly this: statistically independent child streams), so no
two batches ever reuse noise and a run is reproducible batch by batch.
"""

from __future__ import annotations

import numpy as np
import torch


def batch_seed(base_seed: int, rank: int = 0, batch_idx: int = 0) -> int:
    """A 63-bit seed unique to ``(base_seed, rank, batch_idx)``; all three must be >= 0."""
    if min(base_seed, rank, batch_idx) < 0:
        raise ValueError(
            f"seeds, ranks and batch indices must be >= 0, got {(base_seed, rank, batch_idx)}"
        )
    state = np.random.SeedSequence([base_seed, rank, batch_idx]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def make_generator(seed: int, device: torch.device | str | None = None) -> torch.Generator:
    """A generator on ``device`` (noise must be drawn on the device it is used on) seeded with ``seed``."""
    gen = torch.Generator(device=torch.device(device) if device is not None else "cpu")
    gen.manual_seed(seed)
    return gen
