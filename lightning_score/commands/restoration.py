"""What ``lscore inpaint``, ``colorize`` and ``inverse`` share: arguments and the run.

Not a command itself. Truth images come from an ``.npz`` or a folder; the observation is
simulated from them (y = A x + noise), posterior samples are drawn, and the results written
with PSNR / SSIM against the truth (``lightning_score.conditioning.inverse``). Existing outputs are kept
unless ``--overwrite`` is given (``lightning_score.outputs``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from lightning_score.commands.options import count, non_negative, positive
from lightning_score.commands.sample import add_model_arguments, add_sampling_arguments
from lightning_score.outputs import add_overwrite_argument


def add_restoration_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--input",
        required=True,
        help="true images: an .npz, a folder of images, or 'val' (the held-out split of the "
        "checkpoint's data set)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--num-images", type=count, default=8, help="how many inputs to use")
    parser.add_argument("--samples", type=count, default=4, help="posterior samples per input")
    parser.add_argument(
        "--conditioning",
        choices=("projection", "dps", "smc"),
        default="projection",
        help="projection (noiseless y; fixed-grid samplers), dps (measurement gradient) or smc "
        "(particles; noiseless or noisy y; exact as --particles grows)",
    )
    parser.add_argument(
        "--particles",
        type=int,
        default=16,
        help="smc: particles per sample (each costs one score evaluation per step; "
        "--batch-size counts particles)",
    )
    parser.add_argument(
        "--noise-std", type=non_negative, default=0.0, help="measurement noise std (model space)"
    )
    parser.add_argument("--scale", type=non_negative, default=1.0, help="dps: measurement weight")
    parser.add_argument(
        "--data-std",
        type=non_negative,
        default=None,
        help="dps: data std for the posterior-variance term, smc: for its twist (default: the "
        "model's sigma_data; "
        "0 drops the term and uses the network's Jacobian throughout: plain DPS)",
    )
    parser.add_argument(
        "--network-sigma",
        type=positive,
        default=None,
        help="dps: noise level below which the denoiser's Jacobian comes from the network (above "
        "it: the Gaussian one); default 10 x the data std",
    )
    add_overwrite_argument(parser)
    add_sampling_arguments(parser)


def run_restoration(
    args: argparse.Namespace,
    make_operator: Callable[[Sequence[int]], object],
    title: str,
) -> int:
    from lightning_score.commands.sample import resolve_device, sampling_from_args
    from lightning_score.conditioning.inputs import HELD_OUT, load_images
    from lightning_score.conditioning.inverse import RESTORATION_FILES, restore, save_restoration
    from lightning_score.data import data_shape
    from lightning_score.outputs import check_outputs
    from lightning_score.training.checkpoint import load_score_model

    outputs = [args.out / name for name in RESTORATION_FILES]
    inputs = [Path(args.checkpoint)] + ([] if args.input == HELD_OUT else [Path(args.input)])
    check_outputs(outputs, args.overwrite, inputs=inputs)
    device = resolve_device(args.device)
    model, exp = load_score_model(args.checkpoint, ema=args.ema, map_location=device)
    shape = data_shape(exp.data)
    truth = load_images(args.input, shape, args.num_images, data=exp.data, seed=exp.seed)
    operator = make_operator(shape)
    data_std = exp.model.sigma_data if args.data_std is None else (args.data_std or None)
    network_sigma = args.network_sigma
    if network_sigma is None and data_std is not None:
        network_sigma = 10 * data_std
    cfg = sampling_from_args(exp.sampling, args)
    result = restore(
        model,
        model.sde,
        operator,  # type: ignore[arg-type]
        truth,
        cfg,
        method=args.conditioning,
        noise_std=args.noise_std,
        samples_per_input=args.samples,
        scale=args.scale,
        data_std=data_std,
        network_sigma=network_sigma,
        particles=args.particles,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
        progress=args.progress,
    )
    save_restoration(result, args.out, f"{title} ({args.conditioning}, {result.nfe} NFE)")
    m = result.metrics
    print(
        f"{title}: {truth.shape[0]} inputs x {args.samples} samples, {result.nfe} NFE; "
        f"PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f} (mean of samples: PSNR "
        f"{m['psnr_of_mean']:.2f} dB, SSIM {m['ssim_of_mean']:.3f}) -> {args.out}"
    )
    if "particles" in m:
        print(
            f"smc: {m['particles']} particles per sample, effective sample size {m['ess_mean']:.1f} "
            f"on average, {m['ess_min']:.1f} at the lowest, {m['resamples']:.1f} resampling steps"
        )
    return 0
