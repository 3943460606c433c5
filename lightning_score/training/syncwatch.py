"""Finds host-device synchronisations in code that runs on the CPU.

On a GPU, reading a tensor's value on the host (``.item()``, ``bool()``, ``.tolist()``, a copy to
the CPU), creating a GPU tensor from Python numbers (a blocking copy from pageable memory) or an
operation whose output size depends on the data (``nonzero``, boolean indexing) makes the host
wait until the GPU has finished all queued work, and the GPU then idles while the host catches up.
The same calls run on the CPU, where they cost nothing; :class:`HostSyncWatch` records them there,
so that a CPU test or benchmark can tell whether a training step would synchronise on a GPU. On a
GPU, ``torch.cuda.set_sync_debug_mode`` is the authority.
"""

from __future__ import annotations

import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.overrides import TorchFunctionMode

_TORCH = str(Path(torch.__file__).parent)
_HERE = str(Path(__file__))
_OVERRIDES = str(Path(torch.__file__).parent / "overrides.py")

#: calls that return a host value computed from device data
_READS = frozenset(
    {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu"}
    | {"equal", "allclose", "nonzero", "masked_select", "unique", "repeat_interleave"}
)


#: code that reads host tensors whatever the training device: data loading (index shuffling,
#: augmentation in datasets) and the step count that the multi-tensor Adam keeps on the host
HOST_SIDE = ("torch/utils/data/", "lightning_score/data/", "torch/optim/optimizer.py")


@dataclass(frozen=True)
class SyncEvent:
    """One synchronising call: the training step it fell in (0: outside steps), the call, the
    innermost frame that made it (``site``) and the innermost frame outside torch (``caller``)."""

    step: int
    call: str
    site: str
    caller: str


class HostSyncWatch(TorchFunctionMode):
    """Records every call that would synchronise with a GPU while it is entered.

    ``marker()`` gives a callback that tags the events with the training step under way.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[SyncEvent] = []
        self.step = 0

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if _synchronises(name, args, kwargs):
            self.events.append(SyncEvent(self.step, name, *_frames()))
        return func(*args, **kwargs)

    def marker(self) -> L.Callback:
        return _StepMarker(self)

    def device_events(self) -> list[SyncEvent]:
        """The events outside :data:`HOST_SIDE` code, which would wait for a GPU."""
        return [e for e in self.events if not any(part in e.site for part in HOST_SIDE)]

    def per_step(self) -> Counter[int]:
        """Number of :meth:`device_events` per training step."""
        return Counter(e.step for e in self.device_events())


def _synchronises(name: str, args: tuple, kwargs: dict) -> bool:
    if name in _READS:
        return True
    if name in ("tensor", "as_tensor"):  # Python data copied to an explicitly named device
        return kwargs.get("device") is not None and bool(args) and not torch.is_tensor(args[0])
    if name == "__getitem__" and len(args) > 1:  # boolean-mask indexing: data-dependent shape
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(torch.is_tensor(i) and i.dtype == torch.bool for i in index)
    return False


def _frames() -> tuple[str, str]:
    frames = [
        (f.f_code.co_filename, line)
        for f, line in traceback.walk_stack(None)
        if f.f_code.co_filename not in (_HERE, _OVERRIDES)
    ]
    site = frames[0]
    caller = next((f for f in frames if not f[0].startswith(_TORCH)), site)
    return f"{site[0]}:{site[1]}", f"{caller[0]}:{caller[1]}"


class _StepMarker(L.Callback):
    def __init__(self, watch: HostSyncWatch) -> None:
        self.watch = watch

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.watch.step = trainer.global_step + 1

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.watch.step = 0
