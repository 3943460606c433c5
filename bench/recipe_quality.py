"""Quality per compute beside the tools users would pick instead (issue 24).

One network for every recipe (diffusers' ``UNet2DModel`` as ``lightning_score.nets.unet.small_unet``
builds it: the same channels, the same parameter count), Fashion-MNIST at ``--image-size``, the same
batch size, optimizer steps and EMA length (the largest EMA decay) for everyone, ``--seeds`` seeds
each. Every recipe is scored at each of ``--budgets`` (optimizer steps) by FID of ``--num-fid``
samples at 20 NFE with this project's Inception against the Fashion-MNIST test set, with paired
bootstrap standard errors (``lightning_score.evaluation.uncertainty``, as ``lscore ablate``).

Recipes:

* ``vp``: this project's ``train.py`` path (``lightning_score.training.run.train``): VP SDE, the
  paper's sigma^2 weighting, t ~ U(eps, 1), constant-decay EMA; sampled with ``--our-sampler``.
* ``edm``: the same path with ``sde.name=edm`` (EDM's preconditioning, lambda(sigma) weighting,
  log-normal sigma).
* ``diffusers``: the loop of diffusers' unconditional training example (``DDPMScheduler`` with 1000
  linear-beta steps, epsilon prediction and MSE, AdamW + cosine schedule with warmup, ``EMAModel``
  with its warmup, gradient clipping at 1), sampled with ``DPMSolverMultistepScheduler`` at 20 steps.
* ``k-diffusion``: ``k_diffusion.layers.Denoiser`` (sigma_data 0.5) with its loss, log-normal sigma
  (-1.2, 1.2), AdamW, ``EMAWarmup`` + ``ema_update``; ``sample_dpmpp_2m`` on Karras sigmas, 20 steps.
  Its inner network gets ln(sigma) / 4 as the UNet's timestep, as this project's EDM row does.

Training time: each recipe's seconds per optimizer step once warm, timed in ``--time-rounds`` short
windows taken round-robin before the training runs (the median), so that the load of a shared
machine falls on every recipe alike; equal training time means budget x that figure.

Peers are installed only by the ``bench`` extra (``pip install -e .[bench]``); a peer that cannot
be imported is reported with the reason and left out. Prints one JSON document; ``--out`` also
gets ``recipe_quality.json``, ``recipe_quality.md`` (the table) and ``recipe_quality.png`` (FID
against steps).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn

NFE = 20
OURS = ("vp", "edm")
PEERS = ("diffusers", "k-diffusion")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default=",".join(OURS + PEERS), help="comma-separated")
    p.add_argument("--budgets", default="500,1000,2000", help="optimizer steps scored (ascending)")
    p.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    p.add_argument("--image-size", type=int, default=16, choices=(16, 28))
    p.add_argument("--channels", default="32,64", help="UNet channels per level")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ema-decay", type=float, default=0.999, help="every recipe's (final) decay")
    p.add_argument("--lr", type=float, default=2e-4, help="this project's recipes")
    p.add_argument("--warmup", type=int, default=200, help="this project's recipes (steps)")
    p.add_argument("--peer-lr", type=float, default=1e-4, help="the peers' documented default")
    p.add_argument("--peer-warmup", type=int, default=500, help="diffusers' example default")
    p.add_argument("--our-sampler", default="dpmpp_2m", help="this project's sampler at 20 NFE")
    p.add_argument(
        "--our-ema",
        default="exponential",
        choices=("exponential", "power"),
        help="this project's EMA: ema.decay from step 0, or power-function EMAs (ema.std_rel)",
    )
    p.add_argument("--our-std-rel", type=float, default=0.10, help="with --our-ema power")
    p.add_argument("--num-fid", type=int, default=2000, help="samples per FID (>= 2000 to report)")
    p.add_argument("--reference", type=int, default=10000, help="test images in the reference")
    p.add_argument(
        "--ref-stats",
        type=Path,
        default=None,
        help="reuse the test split's statistics from `lscore stats` at --image-size instead of "
        "computing them (replaces --reference)",
    )
    p.add_argument("--data-root", default="data", help="Fashion-MNIST IDX files (or Debian's)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--time-rounds", type=int, default=3, help="round-robin step-time windows")
    p.add_argument("--time-steps", type=int, default=30, help="timed steps per window")
    p.add_argument("--time-skip", type=int, default=10, help="untimed warm-up steps per window")
    p.add_argument("--out", type=Path, default=Path("runs/recipe_quality"))
    return p.parse_args()


# -- data ---------------------------------------------------------------------------------------
def fashion_mnist(root: str, train: bool, size: int) -> Tensor:
    """The split's images in [0, 1] at ``size``, as this project's data module resizes them."""
    from lightning_score.data.tensor_sets import ImageTensorDataset, load_fashion_mnist_uint8

    images, labels = load_fashion_mnist_uint8(Path(root), train=train, download=False)
    dataset = ImageTensorDataset(images, labels, size=size)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def batches(data: Tensor, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Shuffled batches in [-1, 1], reshuffled every epoch (the peers' loaders)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(len(data), generator=gen).split(batch_size):
            if len(idx) == batch_size:
                yield data[idx] * 2 - 1


# -- recipes ------------------------------------------------------------------------------------
@dataclass
class Trained:
    """Samples in [0, 1] at each budget, and the training seconds up to it."""

    samples: dict[int, Tensor] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    nfe: float = 0.0


#: a peer's optimizer step on a batch in [-1, 1], and its sampler (count, seed) -> images in [0, 1]
PeerParts = tuple[Callable[[Tensor], None], Callable[[int, int], Tensor]]


def _unet(args: argparse.Namespace, row: str) -> nn.Module:
    """The one network: diffusers' UNet2DModel as this project builds it for ``row``."""
    from lightning_score.nets.unet import small_unet
    from lightning_score.parameterization import build_parameterization
    from lightning_score.sde import EDMSDE, VPSDE

    sde = EDMSDE() if row == "edm" else VPSDE()
    channels = [int(c) for c in args.channels.split(",")]
    shape = (1, args.image_size, args.image_size)
    return small_unet(shape, build_parameterization(row, sde, 0.5), channels=channels).unet


class BudgetClock(L.Callback):
    """Training seconds from the first step to each budget (validation and checkpoint saves in
    between included: a user pays for them; start-up and the final sampling are not)."""

    def __init__(self, budgets: list[int]) -> None:
        self.budgets, self.seconds, self.start = set(budgets), {}, 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step in self.budgets:
            self.seconds[trainer.global_step] = time.perf_counter() - self.start


def our_config(recipe: str, args: argparse.Namespace, seed: int, budgets: list[int], out: Path):
    """The config of this project's ``recipe`` as train.py would run it."""
    from lightning_score.experiment import load_config

    every = math.gcd(*budgets)
    overrides = [
        f"name=recipe-{recipe}-s{seed}",
        f"out_dir={out}",
        f"seed={seed}",
        "sde.name=" + ("edm" if recipe == "edm" else "vpsde"),
        "model.name=unet",
        f"model.kwargs.channels=[{args.channels}]",
        "data.name=fashion_mnist",
        f"data.root={args.data_root}",
        f"data.image_size={args.image_size}",
        f"data.batch_size={args.batch_size}",
        f"optim.lr={args.lr}",
        f"optim.warmup_steps={args.warmup}",
        f"ema.decay={args.ema_decay}",
        f"ema.kind={args.our_ema}",
        f"ema.std_rel=[{args.our_std_rel}]",
        f"trainer.max_steps={budgets[-1]}",
        f"trainer.val_check_interval={budgets[-1]}",
        f"checkpoint.every_n_steps={every}",
        f"sample_grid.every_n_steps={budgets[-1]}",
        "resume=none",
        f"sampling.sampler={args.our_sampler}",
        f"sampling.steps={NFE - 1}",  # and the final denoising step: NFE in all
    ]
    if recipe == "vp":
        overrides.append("loss.weighting=sigma2")
    return load_config(None, overrides)


def ours(recipe: str, args: argparse.Namespace, seed: int, budgets: list[int]) -> Trained:
    """This project's train.py path, checkpoints at every budget, then its own sampler."""
    from lightning_score.data import data_shape
    from lightning_score.images import to_data_space
    from lightning_score.sampling.generate import generate
    from lightning_score.training.checkpoint import load_score_model
    from lightning_score.training.run import train

    cfg = our_config(recipe, args, seed, budgets, args.out / "runs")
    clock = BudgetClock(budgets)
    run_dir = train(cfg, callbacks=[clock])
    out = Trained()
    for budget in budgets:
        model, saved = load_score_model(run_dir / "checkpoints" / f"step{budget:07d}.ckpt")
        gen = generate(
            model, model.sde, data_shape(saved.data), saved.sampling,
            num=args.num_fid, batch_size=500, seed=10_000 + seed,
        )  # fmt: skip
        out.samples[budget] = to_data_space(model.sde, gen.samples)
        out.seconds[budget] = clock.seconds[budget]
        out.nfe = gen.nfe
        if gen.nfe != NFE:
            raise SystemExit(f"{args.our_sampler} made {gen.nfe} NFE, not {NFE}: pick another")
    return out


def _peer_loop(
    parts: PeerParts, data: Tensor, args: argparse.Namespace, seed: int, budgets: list[int]
) -> Trained:
    step, sample = parts
    out, seconds, done = Trained(), 0.0, 0
    stream = batches(data, args.batch_size, seed)
    for budget in budgets:
        start = time.perf_counter()
        for _ in range(budget - done):
            step(next(stream))
        seconds += time.perf_counter() - start
        done = budget
        out.samples[budget] = sample(args.num_fid, 10_000 + seed)
        out.seconds[budget] = seconds
    out.nfe = NFE
    return out


def diffusers_recipe(
    args: argparse.Namespace, seed: int, budgets: list[int], data: Tensor
) -> PeerParts:
    """diffusers' train_unconditional example, at our batch size, steps and EMA decay."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    unet = _unet(args, "vp")
    noise_sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.AdamW(
        unet.parameters(), lr=args.peer_lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8
    )
    lr_sched = get_scheduler(
        "cosine", opt, num_warmup_steps=args.peer_warmup, num_training_steps=budgets[-1]
    )
    ema = EMAModel(
        unet.parameters(), decay=args.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=0.75
    )

    def step(x: Tensor) -> None:
        noise = torch.randn_like(x)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(x),))
        pred = unet(noise_sched.add_noise(x, noise, t), t).sample
        nn.functional.mse_loss(pred, noise).backward()
        nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        opt.zero_grad()
        ema.step(unet.parameters())

    @torch.no_grad()
    def sample(num: int, sample_seed: int) -> Tensor:
        net = copy.deepcopy(unet)
        ema.copy_to(net.parameters())
        solver = DPMSolverMultistepScheduler.from_config(noise_sched.config)
        gen = torch.Generator().manual_seed(sample_seed)
        chunks = []
        for n in [500] * (num // 500) + ([num % 500] if num % 500 else []):
            solver.set_timesteps(NFE)
            x = torch.randn(n, *data.shape[1:], generator=gen)
            for t in solver.timesteps:
                x = solver.step(net(x, t).sample, t, x).prev_sample
            chunks.append(((x + 1) / 2).clamp(0, 1))
        return torch.cat(chunks)

    return step, sample


def kdiffusion_recipe(
    args: argparse.Namespace, seed: int, budgets: list[int], data: Tensor
) -> PeerParts:
    """k-diffusion's Denoiser, loss, sigma density and EMA warmup, at our batch, steps and EMA."""
    import k_diffusion as K

    class Inner(nn.Module):
        def __init__(self, unet: nn.Module) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
            return self.unet(x, sigma.log() / 4).sample

    torch.manual_seed(seed)
    model = K.layers.Denoiser(Inner(_unet(args, "edm")), sigma_data=0.5)
    model_ema = copy.deepcopy(model)
    opt = torch.optim.AdamW(
        model.parameters(), lr=args.peer_lr, betas=(0.95, 0.999), eps=1e-6, weight_decay=1e-3
    )
    ema_sched = K.utils.EMAWarmup(power=2 / 3, max_value=args.ema_decay)

    def step(x: Tensor) -> None:
        sigma = K.utils.rand_log_normal([len(x)], loc=-1.2, scale=1.2)
        model.loss(x, torch.randn_like(x), sigma).mean().backward()
        opt.step()
        opt.zero_grad()
        K.utils.ema_update(model, model_ema, ema_sched.get_value())
        ema_sched.step()

    @torch.no_grad()
    def sample(num: int, sample_seed: int) -> Tensor:
        sigmas = K.sampling.get_sigmas_karras(NFE, 1e-2, 80.0, rho=7.0)
        gen = torch.Generator().manual_seed(sample_seed)
        chunks = []
        for n in [500] * (num // 500) + ([num % 500] if num % 500 else []):
            x = torch.randn(n, *data.shape[1:], generator=gen) * sigmas[0]
            x = K.sampling.sample_dpmpp_2m(model_ema, x, sigmas, disable=True)
            chunks.append(((x + 1) / 2).clamp(0, 1))
        return torch.cat(chunks)

    return step, sample


# -- step time ----------------------------------------------------------------------------------
class StepClock(L.Callback):
    """Seconds between the end of optimizer step ``skip`` and of step ``skip + steps``."""

    def __init__(self, skip: int, steps: int) -> None:
        self.skip, self.steps, self.marks = skip, steps, {}

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step in (self.skip, self.skip + self.steps):
            self.marks[trainer.global_step] = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.marks[self.skip + self.steps] - self.marks[self.skip]


def time_steps(recipe: str, args: argparse.Namespace, data: Tensor) -> float:
    """Seconds per optimizer step of ``recipe`` once warm (``--time-skip`` steps untimed)."""
    import tempfile

    from lightning_score.training.run import train

    skip, steps = args.time_skip, args.time_steps
    if recipe in OURS:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = our_config(recipe, args, 0, [skip + steps], Path(tmp))
            clock = StepClock(skip, steps)
            train(cfg, callbacks=[clock])
            return clock.seconds / steps
    parts = {"diffusers": diffusers_recipe, "k-diffusion": kdiffusion_recipe}[recipe]
    step, _ = parts(args, 0, [skip + steps], data * 1.0)
    stream = batches(data, args.batch_size, 0)
    for _ in range(skip):
        step(next(stream))
    start = time.perf_counter()
    for _ in range(steps):
        step(next(stream))
    return (time.perf_counter() - start) / steps


def step_seconds(recipes: list[str], args: argparse.Namespace, data: Tensor) -> dict[str, float]:
    """Median seconds per step of every recipe, timed round-robin ``--time-rounds`` times: the
    machine's load drifts over an hour-long run, and alternating short windows puts every
    recipe under the same drift (peers that cannot be imported are left out)."""
    import statistics

    times: dict[str, list[float]] = {r: [] for r in recipes}
    for _ in range(args.time_rounds):
        for recipe in recipes:
            try:
                times[recipe].append(time_steps(recipe, args, data))
            except ImportError:
                continue
    return {r: statistics.median(v) for r, v in times.items() if v}


# -- scoring ------------------------------------------------------------------------------------
def inception_features(extractor: nn.Module, images: Tensor) -> Tensor:
    """Pool features of images in [0, 1] (uint8 as every FID here sees them)."""
    from lightning_score.images import to_uint8

    feats = [extractor.features(to_uint8(chunk))["pool"] for chunk in images.split(100)]
    return torch.cat(feats).double()


def reference_stats(args: argparse.Namespace, extractor: nn.Module) -> tuple[Tensor, Tensor, str]:
    """FID's mu and sigma of the test split (``--ref-stats``' file, or the first ``--reference``
    images), and the report's words for them."""
    if args.ref_stats is not None:
        from lightning_score.evaluation.reference import ReferenceStats

        stats = ReferenceStats.load(args.ref_stats, extractor.num_features, extractor.name)
        described = f"{args.ref_stats.name} ({stats.num_samples} images, lscore stats)"
        return torch.from_numpy(stats.mu), torch.from_numpy(stats.sigma), described
    test = fashion_mnist(args.data_root, False, args.image_size)[: args.reference]
    with torch.no_grad():
        ref = inception_features(extractor, test)
    return ref.mean(0), torch.cov(ref.T), f"Fashion-MNIST test set, first {len(test)} images"


def frechet(f: Tensor, mu: Tensor, sigma: Tensor) -> float:
    from lightning_score.evaluation.uncertainty import frechet_statistic

    idx = torch.arange(len(f)).unsqueeze(0)
    return float(frechet_statistic([f], mu, sigma)(idx, idx[:, :1])[0, 0])


def equal_time_ratio(ours_row: dict, peer_row: dict, budgets: list[int]) -> list[dict]:
    """Our FID over the peer's at the training time each of our budgets takes (budget x the
    round-robin seconds per step; the peer's FID interpolated in log time between its budgets,
    None outside its measured range)."""
    out = []
    pt = [math.log(b * peer_row["s_per_step"]) for b in budgets]
    for budget, fid in zip(budgets, ours_row["fid"], strict=True):
        seconds = budget * ours_row["s_per_step"]
        lt = math.log(seconds)
        peer_fid = None
        for i in range(len(pt) - 1):
            if pt[i] <= lt <= pt[i + 1]:
                w = (lt - pt[i]) / (pt[i + 1] - pt[i])
                peer_fid = (1 - w) * peer_row["fid"][i] + w * peer_row["fid"][i + 1]
        out.append({"seconds": seconds, "ratio": None if peer_fid is None else fid / peer_fid})
    return out


def main() -> None:
    started = time.perf_counter()
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    budgets = sorted(int(b) for b in args.budgets.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    recipes = args.recipes.split(",")
    unknown = sorted(set(recipes) - set(OURS + PEERS))
    if unknown:
        raise SystemExit(f"unknown recipes {unknown}: choose from {list(OURS + PEERS)}")
    from lightning_score.evaluation import load_inception
    from lightning_score.evaluation.uncertainty import frechet_statistic, paired_bootstrap

    data = fashion_mnist(args.data_root, True, args.image_size)
    extractor = load_inception().eval()
    mu, sigma, reference = reference_stats(args, extractor)
    s_per_step = step_seconds(recipes, args, data)
    peers = {"diffusers": diffusers_recipe, "k-diffusion": kdiffusion_recipe}
    results: dict[str, dict] = {}
    unavailable: dict[str, str] = {}
    features: list[Tensor] = []
    keys: list[tuple[str, int, int]] = []
    for recipe in recipes:
        for seed in seeds:
            try:
                if recipe in OURS:
                    trained = ours(recipe, args, seed, budgets)
                else:
                    parts = peers[recipe](args, seed, budgets, data * 1.0)
                    trained = _peer_loop(parts, data, args, seed, budgets)
            except ImportError as err:
                unavailable[recipe] = f"{type(err).__name__}: {err}"
                break
            for budget in budgets:
                with torch.no_grad():
                    features.append(inception_features(extractor, trained.samples[budget]))
                keys.append((recipe, seed, budget))
                row = results.setdefault(recipe, {"per_seed": {}, "nfe": trained.nfe})
                row["per_seed"].setdefault(seed, {})[budget] = {
                    "fid": frechet(features[-1], mu, sigma),
                    "seconds": trained.seconds[budget],
                }
    boot = paired_bootstrap(frechet_statistic(features, mu, sigma), args.num_fid, 1, 100)
    stderr = dict(zip(keys, boot.stderr().tolist(), strict=True))
    table = []
    for recipe, row in results.items():
        fids, secs, ses = [], [], []
        for budget in budgets:
            per = [row["per_seed"][s][budget] for s in row["per_seed"]]
            fids.append(sum(p["fid"] for p in per) / len(per))
            secs.append(sum(p["seconds"] for p in per) / len(per))
            errs = [stderr[(recipe, s, budget)] for s in row["per_seed"]]
            ses.append(math.sqrt(sum(e * e for e in errs)) / len(errs))
        row.update(fid=fids, seconds=secs, fid_stderr=ses, s_per_step=s_per_step.get(recipe))
        table.append(recipe)
    ratios = {}
    ours_in = [r for r in OURS if r in results]
    peers_in = [r for r in PEERS if r in results]
    if ours_in and peers_in:
        best_ours = min(ours_in, key=lambda r: results[r]["fid"][-1])
        best_peer = min(peers_in, key=lambda r: results[r]["fid"][-1])
        ratios = {
            "ours": best_ours,
            "peer": best_peer,
            "equal_steps": [
                a / b
                for a, b in zip(results[best_ours]["fid"], results[best_peer]["fid"], strict=True)
            ],
            "equal_time": equal_time_ratio(results[best_ours], results[best_peer], budgets),
        }
    report = {
        "benchmark": "recipe_quality",
        "our_ema": args.our_ema
        if args.our_ema == "exponential"
        else f"power, std_rel {args.our_std_rel}",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "budgets": budgets,
        "seeds": seeds,
        "num_fid": args.num_fid,
        "reference": reference,
        "nfe": NFE,
        "recipes": results,
        "unavailable": unavailable,
        "ratio_best_ours_to_best_peer": ratios,
        "wall_seconds": time.perf_counter() - started,  # the whole comparison, sized by the flags
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recipe_quality.json").write_text(json.dumps(report, indent=1))
    (args.out / "recipe_quality.md").write_text(markdown(report))
    plot(report, args.out / "recipe_quality.png")
    print(json.dumps(report))


def markdown(report: dict) -> str:
    budgets = report["budgets"]
    head = (
        "| recipe | "
        + " | ".join(f"FID at {b} steps" for b in budgets)
        + " | s/step (round-robin) |"
    )
    head += " s/step (whole run) |"
    lines = [head, "|" + " --- |" * (len(budgets) + 3)]
    for recipe, row in report["recipes"].items():
        cells = [f"{f:.1f} ± {s:.1f}" for f, s in zip(row["fid"], row["fid_stderr"], strict=True)]
        whole = row["seconds"][-1] / budgets[-1]
        lines.append(
            f"| {recipe} | " + " | ".join(cells) + f" | {row['s_per_step']:.3f} | {whole:.3f} |"
        )
    for recipe, why in report["unavailable"].items():
        lines.append(f"| {recipe} | not run: {why} |")
    ratios = report["ratio_best_ours_to_best_peer"]
    if ratios:
        steps = ", ".join(f"{r:.2f}" for r in ratios["equal_steps"])
        times = ", ".join(
            f"{r['ratio']:.2f} at {r['seconds']:.0f} s" if r["ratio"] is not None
            else f"outside the peer's range at {r['seconds']:.0f} s"
            for r in ratios["equal_time"]
        )  # fmt: skip
        lines += [
            "",
            f"FID of {ratios['ours']} over {ratios['peer']}: at equal steps {steps}; "
            f"at equal training time {times}.",
        ]
    lines += ["", f"The whole comparison took {report['wall_seconds'] / 60:.0f} minutes."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for recipe, row in report["recipes"].items():
        seconds = [b * row["s_per_step"] for b in report["budgets"]]
        for ax, x in zip(axes, (report["budgets"], seconds), strict=True):
            ax.errorbar(x, row["fid"], yerr=row["fid_stderr"], marker="o", capsize=3,
                        label=recipe)  # fmt: skip
    for ax, label in zip(
        axes, ("optimizer steps", "training seconds (steps x s/step)"), strict=True
    ):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"FID ({report['num_fid']} samples, {report['nfe']} NFE, ± 1 se)")
    seeds = len(report["seeds"])
    fig.suptitle(
        f"Fashion-MNIST {report['image_size']}px, batch {report['batch_size']}, {seeds} seeds, "
        f"{report['threads']} CPU threads",
        fontsize=10,
    )
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
