"""What every benchmark JSON carries: the device, versions, peak memory, FLOP counts and MFU."""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Callable

import lightning
import torch
from torch.utils.flop_counter import FlopCounterMode

#: dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets; MFU is measured against
#: them whatever the precision, so figures of different precisions compare
DENSE_BF16_PEAK = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362.1e12}


def device_info(device: torch.device) -> dict[str, object]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine() or "cpu"
    return {
        "device": name,
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
    }


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    """The dense bf16 peak of ``device`` in FLOP/s (None when unknown, e.g. on a CPU)."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in DENSE_BF16_PEAK.items() if key in name), None)


def mfu(flops_per_item: float | None, items_per_second: float, peak: float | None) -> float | None:
    if not flops_per_item or not peak:
        return None
    return flops_per_item * items_per_second / peak


def count_flops(work: Callable[[], object]) -> float:
    """FLOPs of ``work()`` as ``torch.utils.flop_counter`` counts them (matmuls, convolutions,
    attention; elementwise work is not counted)."""
    with FlopCounterMode(display=False) as counter:
        work()
    return float(counter.get_total_flops())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak device memory allocated since the last reset (None on a CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def peak_host_rss_gib() -> float:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Stopwatch:
    """Wall time of a window of device work: synchronises at both ends."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = 0.0
        self.seconds = 0.0

    def begin(self) -> None:
        synchronize(self.device)
        reset_peak_memory(self.device)
        self.start = time.perf_counter()

    def end(self) -> float:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start
        return self.seconds
