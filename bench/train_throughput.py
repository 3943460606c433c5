"""Training throughput through train.py's own path, beside a plain PyTorch loop in the same run.

    python bench/train_throughput.py --config configs/cifar10_ncsnpp_ve.yaml --steps 30 \
        --warmup 10 trainer.precision=bf16-mixed trainer.compile=default

The framework path is what ``train.py`` builds: ``ScoreModule``, ``build_trainer`` (EMA, gradient
clipping, the non-finite guard, logging, checkpoint and progress-bar callbacks), the speed options
and the resumable train loader, fed synthetic images of the config's shape from memory (no data
set needed). The plain loop does the same arithmetic without any framework: the loss, backward,
gradient clipping, Adam and the EMA update of the config's kind (``ema.kind=power``: one update per
``ema.std_rel`` profile, as the framework makes), on one batch that stays on the device.
``framework_over_plain`` is the ratio of their images/s: the framework's own cost as a number.
Host-device syncs per step are counted (on any device, with HostSyncWatch) over the warmup steps
of the framework path unless the model is compiled. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from common import (
    Stopwatch,
    count_flops,
    device_info,
    mfu,
    peak_flops,
    peak_host_rss_gib,
    peak_memory_gib,
)
from torch.utils.data import TensorDataset

from lightning_score.config import ExperimentConfig
from lightning_score.data import data_shape
from lightning_score.data.base import ScoreDataModule
from lightning_score.data.tensor_sets import ImageTensorDataset
from lightning_score.experiment import build_score_model, load_config
from lightning_score.losses import TIME_SAMPLERS, dsm_loss
from lightning_score.training.module import ScoreModule
from lightning_score.training.posthoc_ema import gamma_from_std_rel, power_beta
from lightning_score.training.run import build_trainer
from lightning_score.training.speed import apply_speed_options
from lightning_score.training.syncwatch import HostSyncWatch

ROOT = Path(__file__).resolve().parents[1]


def synthetic_datamodule(cfg: ExperimentConfig, examples: int) -> ScoreDataModule:
    """Random uint8 images (or Gaussian points) of the config's shape, held in memory."""
    shape = data_shape(cfg.data)
    gen = torch.Generator().manual_seed(0)

    def make(n: int) -> Any:
        if len(shape) == 3:
            images = torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8)
            return ImageTensorDataset(images, torch.zeros(n), shape[-1], cfg.data.random_flip)
        return TensorDataset(torch.randn(n, *shape, generator=gen), torch.zeros(n))

    return ScoreDataModule(cfg.data, shape, lambda: (make(examples), make(64)), cfg.seed)


class Window(L.Callback):
    """Times steps ``warmup + 1 .. warmup + steps``; counts host syncs over steps 2 .. warmup:
    the calls HostSyncWatch sees and, on a GPU, those CUDA's sync debug mode reports."""

    def __init__(self, warmup: int, steps: int, count_syncs: bool) -> None:
        self.warmup, self.steps = warmup, steps
        self.watch = HostSyncWatch() if count_syncs and warmup >= 2 else None
        self.cuda_warnings: warnings.catch_warnings | None = None
        self.cuda_syncs: list[str] = []
        self.stopwatch: Stopwatch | None = None
        self.peak_gib: float | None = None
        self.hooks = HookTimes()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any):
        step = trainer.global_step + 1
        on_gpu = pl_module.device.type == "cuda"
        if self.watch is not None and step == 2:
            self.watch.__enter__()
            if on_gpu:
                self.cuda_warnings = warnings.catch_warnings(record=True)
                self._recorded = self.cuda_warnings.__enter__()
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
        if step == self.warmup + 1:
            if self.watch is not None:
                self.watch.__exit__(None, None, None)
            if self.cuda_warnings is not None:
                torch.cuda.set_sync_debug_mode("default")
                self.cuda_warnings.__exit__(None, None, None)
                self.cuda_syncs = [
                    str(w.message).splitlines()[0]
                    for w in self._recorded
                    if "synchroniz" in str(w.message)
                ]
            self.stopwatch = Stopwatch(pl_module.device)
            self.stopwatch.begin()
            self.hooks.active = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any):
        if trainer.global_step == self.warmup + self.steps and self.stopwatch is not None:
            self.hooks.active = False
            self.stopwatch.end()
            self.peak_gib = peak_memory_gib(pl_module.device)

    def syncs(self) -> dict[str, Any] | None:
        if self.watch is None:
            return None
        events = self.watch.device_events()
        callers = Counter(e.caller.split("site-packages/")[-1] for e in events)
        return {
            "per_step": len(events) / (self.warmup - 1),
            "steps": self.warmup - 1,
            "callers": dict(callers.most_common(8)),
            "cuda_sync_debug_per_step": len(self.cuda_syncs) / (self.warmup - 1)
            if self.cuda_warnings is not None
            else None,
        }


#: the callback hooks that run in every training step
STEP_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
)


class HookTimes:
    """Wall time spent in each callback's per-step hooks while ``active`` (on a GPU that includes
    any wait for the device a hook causes): the framework's cost, callback by callback."""

    def __init__(self) -> None:
        self.active = False
        self.seconds: Counter[str] = Counter()

    def install(self, callbacks: list[L.Callback], skip: L.Callback) -> None:
        for callback in callbacks:
            if callback is skip:
                continue
            for hook in STEP_HOOKS:
                if getattr(type(callback), hook) is not getattr(L.Callback, hook):
                    name = f"{type(callback).__name__}.{hook}"
                    setattr(callback, hook, self._timed(getattr(callback, hook), name))

    def _timed(self, method: Callable[..., Any], name: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                if self.active:
                    self.seconds[name] += time.perf_counter() - start

        return timed

    def per_step_ms(self, steps: int) -> dict[str, float]:
        return {k: 1e3 * v / steps for k, v in self.seconds.most_common()}


def framework_run(cfg: ExperimentConfig, warmup: int, steps: int, count_syncs: bool) -> dict:
    window = Window(warmup, steps, count_syncs and cfg.trainer.compile == "none")
    L.seed_everything(cfg.seed, verbose=False)
    module = ScoreModule.from_config(cfg)
    apply_speed_options(module.score_model, cfg.trainer)
    trainer = build_trainer(cfg, [window])
    window.hooks.install(trainer.callbacks, skip=window)  # type: ignore[attr-defined]
    batch = cfg.data.batch_size // max(trainer.world_size, 1)
    trainer.fit(module, datamodule=synthetic_datamodule(cfg, max(2048, 4 * batch)))
    assert window.stopwatch is not None
    seconds = window.stopwatch.seconds
    return {
        "images_per_second": cfg.data.batch_size * steps / seconds,
        "seconds_per_step": seconds / steps,
        "peak_memory_gib": window.peak_gib,
        "host_syncs": window.syncs(),
        "callback_ms_per_step": window.hooks.per_step_ms(steps),
    }


def autocast(cfg: ExperimentConfig, device: torch.device) -> Callable[[], Any]:
    precision = cfg.trainer.precision
    if precision == "bf16-mixed":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if precision in ("32-true", "32"):
        return contextlib.nullcontext
    raise SystemExit(f"the plain loop runs 32-true and bf16-mixed, not {precision}")


def plain_step(cfg: ExperimentConfig, device: torch.device) -> Callable[[], None]:
    """One training step of the same arithmetic as the framework's."""
    model = build_score_model(cfg).to(device)
    apply_speed_options(model, cfg.trainer)
    sde, lc, o = model.sde, cfg.loss, cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    adam = torch.optim.Adam(
        params,
        lr=o.lr,
        betas=(o.beta1, o.beta2),
        eps=o.eps,
        weight_decay=o.weight_decay,
        fused=o.fused or None,
    )
    ema = plain_ema(cfg, params)
    gen = torch.Generator().manual_seed(0)
    x = sde.scale_data(torch.rand(cfg.data.batch_size, *data_shape(cfg.data), generator=gen))
    x = x.to(device)
    precision = autocast(cfg, device)

    def step() -> None:
        with precision():
            times = TIME_SAMPLERS[lc.time_sampler](sde, x.shape[0], lc, device)
            loss = dsm_loss(model, x, times, lc.weighting, lc.reduce).mean()
        loss.backward()
        if cfg.trainer.gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(params, cfg.trainer.gradient_clip_val)
        adam.step()
        adam.zero_grad(set_to_none=True)
        if ema is not None:
            ema()

    return step


def plain_ema(cfg: ExperimentConfig, params: list[torch.Tensor]) -> Callable[[], None] | None:
    """The EMA update of the config's kind with nothing around it: one ``foreach`` lerp per
    profile (one for ``exponential``, one per ``ema.std_rel`` width for ``power``, with the step's
    decay computed on the host), so the ratio compares like with like whichever kind is set."""
    if not cfg.ema.enabled:
        return None
    power = cfg.ema.kind == "power"
    gammas = [gamma_from_std_rel(s) for s in cfg.ema.std_rel] if power else [0.0]
    averages = [[p.detach().clone() for p in params] for _ in gammas]
    updates = [0]

    def update() -> None:
        updates[0] += 1
        for gamma, average in zip(gammas, averages, strict=True):
            decay = power_beta(updates[0], gamma) if power else cfg.ema.decay
            torch._foreach_lerp_(average, params, 1.0 - decay)

    return update


def plain_run(cfg: ExperimentConfig, device: torch.device, warmup: int, steps: int) -> dict:
    torch.manual_seed(cfg.seed)
    step = plain_step(cfg, device)
    for _ in range(warmup):
        step()
    watch = Stopwatch(device)
    watch.begin()
    for _ in range(steps):
        step()
    seconds = watch.end()
    return {
        "images_per_second": cfg.data.batch_size * steps / seconds,
        "seconds_per_step": seconds / steps,
        "peak_memory_gib": peak_memory_gib(device),
    }


def flops_per_image(cfg: ExperimentConfig, device: torch.device, batch: int = 2) -> float:
    """Forward + backward FLOPs of one training image (uncompiled, so the counter sees all ops)."""
    model = build_score_model(cfg).to(device)
    x = torch.rand(batch, *data_shape(cfg.data), device=device)

    def work() -> None:
        lc = cfg.loss
        times = TIME_SAMPLERS[lc.time_sampler](model.sde, batch, lc, device)
        dsm_loss(model, x, times, lc.weighting, lc.reduce).mean().backward()

    return count_flops(work) / batch


def bench_config(args: argparse.Namespace, out_dir: str) -> ExperimentConfig:
    never = str(10**9)
    return load_config(
        args.config,
        [
            *args.overrides,
            f"out_dir={out_dir}",
            "name=bench",
            "resume=none",
            f"trainer.max_steps={args.warmup + args.steps}",
            f"trainer.val_check_interval={never}",
            f"checkpoint.every_n_steps={never}",
            f"sample_grid.every_n_steps={never}",
            "evaluation.every_n_steps=0",
            "logger.name=csv",
            *([f"data.batch_size={args.batch}"] if args.batch else []),
        ],
    )


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    p.add_argument("--batch", type=int, default=0, help="data.batch_size (0: the config's)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--only", choices=["framework", "plain"], help="run one path only")
    p.add_argument("--no-syncs", action="store_true", help="do not count host syncs")
    p.add_argument("--no-flops", action="store_true", help="do not count FLOPs (no MFU)")
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as out_dir:
        cfg = bench_config(args, out_dir)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if cfg.trainer.accelerator == "cpu":
            device = torch.device("cpu")
        record: dict[str, Any] = {
            "benchmark": "train_throughput",
            **device_info(device),
            "config": Path(args.config).name,
            "overrides": args.overrides,
            "model": cfg.model.name,
            "batch": cfg.data.batch_size,
            "precision": cfg.trainer.precision,
            "compile": cfg.trainer.compile,
            "channels_last": cfg.trainer.channels_last,
            "fused_adam": cfg.optim.fused,
            "ema": cfg.ema.enabled,
            "ema_kind": cfg.ema.kind,
            "ema_profiles": len(cfg.ema.std_rel) if cfg.ema.kind == "power" else 1,
            "gradient_clip_val": cfg.trainer.gradient_clip_val,
            "nonfinite": cfg.trainer.nonfinite,
            "log_every_n_steps": cfg.trainer.log_every_n_steps,
            "num_workers": cfg.data.num_workers,
            "steps": args.steps,
            "warmup": args.warmup,
            "params": sum(p.numel() for p in build_score_model(cfg).parameters()),
        }
        runs: dict[str, dict] = {}
        if args.only != "plain":
            runs["framework"] = framework_run(cfg, args.warmup, args.steps, not args.no_syncs)
        if args.only != "framework":
            runs["plain"] = plain_run(cfg, device, args.warmup, args.steps)
        flops = None if args.no_flops else flops_per_image(cfg, device)
        peak = peak_flops(device, args.peak_tflops)
        for run in runs.values():
            run["mfu"] = mfu(flops, run["images_per_second"], peak)
        record.update(runs)
        if len(runs) == 2:
            record["framework_over_plain"] = (
                runs["framework"]["images_per_second"] / runs["plain"]["images_per_second"]
            )
        record["flops_per_image"] = flops
        record["peak_tflops_dense_bf16"] = peak / 1e12 if peak else None
        record["peak_host_rss_gib"] = peak_host_rss_gib()
    print(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1:])
