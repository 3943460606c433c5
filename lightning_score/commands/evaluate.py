"""``lscore evaluate CKPT --num 50000 --metrics fid,is,kid``: sample and score against the data.

Samples come from the EMA weights (``--no-ema`` for the raw ones) with the checkpoint's sampler
unless flags override it; batch b uses the seed ``batch_seed(seed, 0, b)``, exactly as
``lscore sample`` does, so the two commands draw the same images. ``SOURCE`` may also be an
``.npz`` of uint8 images (``arr_0``, NHWC or NCHW) such as ``lscore sample`` writes.

Reference statistics: ``--stats FILE.npz`` (from ``lscore stats``), or computed from the training
split of the checkpoint's data config (``--data-config`` for an ``.npz``), cached by content.
``ema.std_rel=W`` among the overrides evaluates the EMA of width W, reconstructed in memory from the
power-EMA snapshots of the checkpoint's run (``lscore posthoc-ema``): an EMA sweep is then a sweep of
evaluations. Metric names carry the sample count (``fid_50k``): the paper's numbers use 50,000 samples against
the training set, and fewer samples bias FID upwards. Results are printed and written as JSON;
an existing result is kept unless ``--overwrite`` is given, and ``--out`` is checked before the
sampling starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_score.commands.sample import (
    add_sampling_arguments,
    check_positive,
    resolve_device,
    sampling_from_args,
)
from lightning_score.commands.stats import add_extractor_arguments
from lightning_score.config import ConfigError, ExperimentConfig, SamplingConfig
from lightning_score.outputs import add_overwrite_argument, atomic_path, check_outputs, write_text

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from lightning_score.evaluation import FeatureExtractor
    from lightning_score.nets import ScoreModel

DEFAULT_NUM = 50_000
#: a run whose default sample count would sample longer than this here asks for --yes first
LONG_RUN_S = 3600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="a training checkpoint (.ckpt) or samples (.npz)")
    parser.add_argument(
        "--num",
        type=int,
        default=None,
        help=f"samples (default: {DEFAULT_NUM}, the paper's protocol; all images of an .npz)",
    )
    parser.add_argument(
        "--yes",
        action="store_true",
        help="start even when the default --num would sample for hours on this machine",
    )
    parser.add_argument("--metrics", default="fid", help="comma-separated: fid,is,kid")
    parser.add_argument(
        "--stats",
        type=Path,
        default=None,
        help="reference statistics from `lscore stats` (default: computed from the training "
        "split of the checkpoint's data config, cached)",
    )
    parser.add_argument(
        "--data-config", default=None, help="data config for the reference set of an .npz source"
    )
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="EMA weights (--no-ema: the raw ones)",
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed of the sampler's noise")
    parser.add_argument(
        "--sample-batch-size", type=int, default=250, help="images per sampler batch"
    )
    parser.add_argument("--kid-subset-size", type=int, default=1000, help="images per KID subset")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for the metrics JSON and a sample grid (default: eval/ beside SOURCE)",
    )
    add_extractor_arguments(parser)
    add_overwrite_argument(parser)
    add_sampling_arguments(parser)
    parser.add_argument(
        "overrides",
        nargs="*",
        help="sampling overrides as OmegaConf dotlists (what W&B sweep agents pass), "
        "e.g. sampling.steps=100 'sampling={corrector: langevin, snr: 0.16}'; ema.std_rel=0.08 "
        "evaluates the EMA of that width, reconstructed from the run's power-EMA snapshots",
    )


#: the one non-sampling override: a post-hoc EMA width (``lscore posthoc-ema`` in memory)
POSTHOC_KEY = "ema.std_rel="


def posthoc_width(overrides: list[str]) -> tuple[float | None, list[str]]:
    """``ema.std_rel=W`` taken out of ``overrides``: the width to reconstruct, and the rest."""
    widths = [o[len(POSTHOC_KEY) :] for o in overrides if o.startswith(POSTHOC_KEY)]
    rest = [o for o in overrides if not o.startswith(POSTHOC_KEY)]
    if not widths:
        return None, rest
    try:
        if len(widths) > 1:
            raise ValueError
        width = float(widths[0])
    except ValueError:
        raise ConfigError(
            f"ema.std_rel takes one width to reconstruct after training (e.g. ema.std_rel=0.08), "
            f"got {widths}"
        ) from None
    return width, rest


def sampling_overrides(exp: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """The checkpoint's config with ``sampling.*`` overrides applied (other keys are refused:
    evaluation cannot change how the model was trained)."""
    from lightning_score.experiment import with_overrides

    foreign = [o for o in overrides if not o.startswith("sampling")]
    if foreign:
        raise ConfigError(f"lscore evaluate takes only sampling.* overrides, got {foreign}")
    return with_overrides(exp, overrides)


def _recorded_weights(samples: Path) -> dict[str, Any]:
    """Which weights drew the samples in ``samples``, from the JSON that ``lscore sample`` or
    ``lscore merge`` wrote beside it (nothing when there is none)."""
    try:
        record = json.loads(samples.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    keys = ("checkpoint", "step", "ema", "weights_sha256")
    return {k: record[k] for k in keys if isinstance(record, dict) and k in record}


def _npz_images(path: Path, num: int | None) -> Tensor:
    import numpy as np
    import torch

    from lightning_score.images import load_numpy

    with load_numpy(path) as data:
        if "arr_0" not in data.files:
            raise ValueError(f"{path} holds {data.files}, expected images under 'arr_0'")
        images = data["arr_0"]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"{path}: expected uint8 images (N, H, W, C), got {images.dtype} {images.shape}"
        )
    x = torch.from_numpy(images)
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if num is not None:
        if num > x.shape[0]:
            raise ValueError(f"--num {num} but {path} holds only {x.shape[0]} images")
        x = x[:num]
    return x.contiguous()


def _counted_images(images: Tensor, batch_size: int, progress: bool) -> Iterator[Tensor]:
    """The images of an ``.npz`` source in batches, with a bar over the Inception pass."""
    from lightning_score.progress import progress_bar

    with progress_bar(total=len(images), desc="Inception", unit="image", enabled=progress) as bar:
        for chunk in images.split(batch_size):
            yield chunk
            bar.update(len(chunk))


def _generated_batches(
    model: ScoreModel,
    cfg: SamplingConfig,
    shape: tuple[int, ...],
    args: argparse.Namespace,
    device: torch.device,
    nfes: list[float],
) -> Iterator[Tensor]:
    """Samples in [0, 1], one sampler batch at a time (50k images never sit in memory); the
    same noise as ``lscore sample`` with the same seed."""
    from lightning_score.images import to_data_space
    from lightning_score.sampling.generate import stream_samples

    for batch in stream_samples(
        model,
        model.sde,
        shape,
        cfg,
        num=DEFAULT_NUM if args.num is None else args.num,
        batch_size=args.sample_batch_size,
        seed=args.seed,
        device=device,
        progress=args.progress,
        desc=f"sampling ({cfg.sampler}) + Inception",
    ):
        nfes.append(batch.nfe)
        yield to_data_space(model.sde, batch.samples)


def check_run_time(
    model: ScoreModel,
    cfg: SamplingConfig,
    shape: tuple[int, ...],
    extractor: FeatureExtractor,
    args: argparse.Namespace,
    device: torch.device,
) -> None:
    """Measure what the run will cost before it starts: refuse when the default sample count
    would take longer than LONG_RUN_S here (unless --yes), and say so when it takes minutes."""
    import sys

    import torch

    from lightning_score.sampling.cost import estimate_sampling, timed

    num = args.num or DEFAULT_NUM
    estimate = estimate_sampling(model, model.sde, shape, cfg, num, device)
    if estimate is None:  # the adaptive ODE solver: its NFE is only known once it runs
        return
    images = torch.zeros(8, 3, *shape[1:], dtype=torch.uint8, device=device)
    estimate.seconds_per_image = timed(lambda: extractor.features(images), device) / len(images)
    if args.num is None and estimate.seconds > LONG_RUN_S:
        raise ValueError(
            f"the default --num {DEFAULT_NUM} (the paper's protocol) means {estimate.describe()}: "
            f"pass --num 1000 (or another count) for a quicker estimate, named fid_1k and "
            f"biased upwards, or --yes to run all {DEFAULT_NUM}"
        )
    if estimate.seconds > 60:
        print(f"lscore evaluate: {estimate.describe()}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import torch

    from lightning_score.data import data_shape, image_batches
    from lightning_score.evaluation import (
        METRIC_NAMES,
        ImageMetrics,
        ReferenceStats,
        cached_reference_stats,
        count_suffix,
        load_inception,
    )
    from lightning_score.experiment import load_config
    from lightning_score.images import save_grid
    from lightning_score.progress import progress_bar
    from lightning_score.sampling import check_sampling
    from lightning_score.training.checkpoint import load_model

    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = sorted(set(names) - set(METRIC_NAMES))
    if unknown or not names:
        raise ValueError(f"--metrics: unknown {unknown}; choose from {', '.join(METRIC_NAMES)}")
    check_positive("--num", args.num, "a positive number of samples")
    check_positive("--sample-batch-size", args.sample_batch_size)
    check_positive("--batch-size", args.batch_size)
    check_positive("--kid-subset-size", args.kid_subset_size)
    device = resolve_device(args.device)
    info: dict[str, Any] = {"source": str(args.source)}
    nfes: list[float] = []
    model = None
    # Everything that can fail cheaply (paths, EMA, sampler flags) fails before any network runs.
    if args.source.suffix == ".npz":
        if args.stats is None and args.data_config is None:
            raise ValueError("an .npz source needs --stats FILE.npz or --data-config CONFIG")
        exp = load_config(args.data_config) if args.data_config else None
        images = _npz_images(args.source, args.num)
        info.update(_recorded_weights(args.source))
        count = images.shape[0]
        chunks: Iterator[Tensor] = _counted_images(images, args.batch_size, args.progress)
    else:
        width, overrides = posthoc_width(args.overrides)
        if width is None:
            loaded = load_model(args.source, ema=args.ema, map_location=device)
        elif not args.ema:
            raise ValueError("ema.std_rel=W asks for a reconstructed EMA: drop --no-ema")
        else:
            from lightning_score.training.posthoc_ema import load_posthoc_model

            loaded = load_posthoc_model(args.source, width, map_location=device)
        model, exp = loaded.model, loaded.config
        shape = data_shape(exp.data)
        if len(shape) != 3:
            raise ValueError(
                f"FID / IS / KID need images; '{exp.data.name}' holds points "
                "(use `lscore likelihood` or `lscore ablate --metric swd` for 2-D data)"
            )
        cfg = sampling_from_args(sampling_overrides(exp, overrides).sampling, args)
        check_sampling(model.sde, cfg)
        info.update(loaded.record(), seed=args.seed, sampling=dataclasses.asdict(cfg))
        chunks = _generated_batches(model, cfg, shape, args, device, nfes)
        count = DEFAULT_NUM if args.num is None else args.num
    # Named by the first metric as ImageMetrics orders them, e.g. last_fid_50k; checked now,
    # before the sampling and Inception work.
    first_metric = next(m for m in METRIC_NAMES if m in names)
    stem = f"{args.source.stem}_{first_metric}_{count_suffix(count)}"
    if "sampling" in info:  # one file per sampler and EMA setting: sweep agents share the folder
        setting: dict[str, Any] = info["sampling"]
        if "posthoc_ema" in info:
            setting = {**setting, "posthoc_std_rel": info["posthoc_ema"]["std_rel"]}
        digest = hashlib.sha1(json.dumps(setting, sort_keys=True).encode()).hexdigest()
        stem = f"{stem}_{digest[:8]}"
    out = args.out or (args.source.parent / "eval")
    json_path, grid_path = out / f"{stem}.json", out / f"{stem}.png"
    check_outputs([json_path, grid_path], args.overwrite, inputs=[args.source])

    extractor = load_inception(args.extractor, need_logits="is" in names).to(device)
    if model is not None and not args.yes:
        check_run_time(model, cfg, shape, extractor, args, device)
    metrics = ImageMetrics(names, extractor, kid_subset_size=args.kid_subset_size).to(device)
    if args.stats is not None:
        stats = ReferenceStats.load(args.stats, expected_dim=extractor.num_features)
        info["reference"] = str(args.stats)
        info["reference_set"] = f"statistics file {args.stats}"
    else:
        batches = image_batches(exp.data, exp.seed, "train", args.batch_size)
        with torch.no_grad():
            stats, path, _ = cached_reference_stats(
                batches,
                extractor,
                args.kid_features,
                device,
                args.cache_dir,
                progress=args.progress,
                num_images=len(batches),
            )
        info["reference"] = str(path)
        info["reference_set"] = f"{exp.data.name} training split, {len(batches)} images"
    metrics.set_reference(stats)
    first: Tensor | None = None
    # an .npz source counts its Inception pass itself (_counted_images); generated batches here
    counted = progress_bar(
        total=count,
        desc="Inception features",
        unit="image",
        enabled=args.progress and model is not None,
    )
    with counted:
        for chunk in chunks:
            first = chunk[:64] if first is None else first
            metrics.update_counted(chunk.to(device), counted, args.batch_size)
    values = metrics.compute()
    info.update(
        num_samples=count,
        metrics=values,
        extractor=f"{extractor.name} ({getattr(extractor, 'source', 'custom')})",
    )
    if nfes:
        info["nfe"] = sum(nfes) / len(nfes)

    write_text(json_path, json.dumps(info, indent=2))
    if first is not None:
        with atomic_path(grid_path) as tmp:
            save_grid(first.cpu(), tmp, stem)
    for name, value in values.items():
        print(f"{name} = {value:.4f}")
    print(f"-> {json_path}")
    if exp is not None and "sampling" in info:
        from lightning_score.training.loggers import report_to_wandb  # no-op unless W&B is in use

        summary = {**values, "nfe": info["nfe"]}
        images = {"samples": grid_path} if grid_path.is_file() else None
        settings = {"sampling": info["sampling"]}
        if "posthoc_ema" in info:
            settings["posthoc_ema"] = {"std_rel": info["posthoc_ema"]["std_rel"]}
        report_to_wandb(exp, out, "evaluate", settings, summary, images)
    return 0
