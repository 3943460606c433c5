"""Exact likelihoods through the probability-flow ODE (Song et al. 2021, Sec. 4.3 and App. D.2).

For the ODE dx/dt = f~(x, t) = f(x, t) - g(t)^2 s(x, t) / 2 (eq. 13) the instantaneous change of
variables gives log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div f~(x(t), t) dt (eq. 39). We
integrate x and the divergence integral together from eps to T with torchdiffeq's adaptive
Dormand-Prince RK45 (rtol = atol = 1e-5, eps = 1e-5, as the official code does with scipy). The
divergence is the Hutchinson-Skilling estimate eps^T (d f~/dx) eps with one Rademacher or
Gaussian probe per sample and solve (unbiased), or the exact trace for small dimensions.

Bits/dim for 8-bit images follow the official code: uniform dequantization y = (255 x + U) / 256
of the data x in [0, 1]; the model sees z = scale_data(y); then
bpd = -log p(z) / (D ln 2) + 8 - log2(dz/dy): "+ 8" turns a density on [0, 1)^D into
probabilities of 256-level bins, and log2(dz/dy) = 1 for the [0, 1] -> [-1, 1] scaling of the
VP / sub-VP SDEs (the official ``offset = 7 - inverse_scaler(-1)``).

Over a data set (:func:`evaluate_bits_per_dim`) the noise of point i in repeat r (its
dequantization, then its probe) comes from its own generator seeded by (seed, r, i), so a point's
estimate depends on neither its batch-mates' noise nor the rank that evaluates it: data sharded
over processes (:func:`gather_bits_per_dim`, one gather at the end and no collective in between,
since adaptive solvers take different step counts on different ranks) give the numbers of one
process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint

from lightning_score.progress import progress_bar
from lightning_score.sampling.seeding import batch_seed, make_generator
from lightning_score.sde import SDE, ScoreFn

TRACE_ESTIMATORS = ("rademacher", "gaussian", "exact")
#: the exact trace costs one backward pass per dimension; beyond this use a Hutchinson probe.
EXACT_TRACE_MAX_DIM = 256


@dataclass
class LogLikelihood:
    """Per-sample results of one probability-flow ODE solve."""

    logp: Tensor  # (B,) log p_eps(x) in nats
    prior_logp: Tensor  # (B,) log p_T(x(T))
    z: Tensor  # x(T), the latent code
    nfe: int  # evaluations of the ODE right-hand side (each is one score evaluation)


def _divergence(
    drift_fn: Callable[[Tensor], Tensor], x: Tensor, probe: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Drift f~(x) and its divergence: probe^T J probe (Hutchinson) or tr J (probe is None)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        drift = drift_fn(x)
        if probe is not None:
            (vjp,) = torch.autograd.grad(drift, x, grad_outputs=probe)
            div = (vjp * probe).flatten(1).sum(1)
        else:
            flat = drift.flatten(1)
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for i in range(flat.shape[1]):
                (row,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
                div = div + row.flatten(1)[:, i]
    return drift.detach(), div.detach()


class PointNoise:
    """Noise drawn row by row, each row (data point) from its own generator: what a point gets
    does not depend on the batch it sits in."""

    def __init__(self, seeds: Sequence[int]) -> None:
        self.generators = [make_generator(seed) for seed in seeds]

    def draw(self, kind: str, like: Tensor) -> Tensor:
        rows = [_draw(kind, like[0].shape, like.dtype, "cpu", g) for g in self.generators]
        return torch.stack(rows).to(like.device)


Noise = torch.Generator | PointNoise | None


def _draw(
    kind: str, shape: torch.Size, dtype: torch.dtype, device: torch.device | str, noise: Noise
) -> Tensor:
    """Uniform on [0, 1), standard normal or Rademacher noise of ``shape`` on ``device``."""
    if isinstance(noise, PointNoise):
        return noise.draw(kind, torch.empty(shape, dtype=dtype, device=device))
    where = noise.device if noise is not None else device
    if kind == "uniform":
        out = torch.rand(shape, generator=noise, dtype=dtype, device=where)
    elif kind == "gaussian":
        out = torch.randn(shape, generator=noise, dtype=dtype, device=where)
    else:
        out = torch.randint(0, 2, shape, generator=noise, device=where).to(dtype) * 2 - 1
    return out.to(device)


def _probe(x: Tensor, trace: str, noise: Noise) -> Tensor | None:
    if trace == "exact":
        return None
    return _draw(
        "gaussian" if trace == "gaussian" else "rademacher", x.shape, x.dtype, x.device, noise
    )


def log_likelihood(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    trace: str = "rademacher",
    eps: float = 1e-5,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    generator: Noise = None,
) -> LogLikelihood:
    """log p_eps(x) for a batch x in model space (eq. 39), by one joint ODE solve from eps to T."""
    if trace not in TRACE_ESTIMATORS:
        raise ValueError(f"unknown trace estimator {trace!r}: choose one of {TRACE_ESTIMATORS}")
    dim = x[0].numel()
    if trace == "exact" and dim > EXACT_TRACE_MAX_DIM:
        raise ValueError(
            f"the exact trace needs {dim} backward passes per step for {dim}-d data; "
            f"use trace='rademacher' above {EXACT_TRACE_MAX_DIM} dimensions"
        )
    ode = sde.reverse(score_fn, probability_flow=True)
    probe = _probe(x, trace, generator)
    nfe = 0

    def rhs(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        xt = state[0]
        vec_t = torch.full((xt.shape[0],), float(t), dtype=xt.dtype, device=xt.device)
        return _divergence(lambda y: ode.sde(y, vec_t)[0], xt, probe)

    times = torch.tensor([eps, sde.T], dtype=x.dtype, device=x.device)
    init = (x.detach(), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    with torch.no_grad():
        xs, deltas = odeint(rhs, init, times, rtol=rtol, atol=atol, method=method)
    z, delta_logp = xs[-1], deltas[-1]
    prior = sde.prior_logp(z)
    return LogLikelihood(logp=prior + delta_logp, prior_logp=prior, z=z, nfe=nfe)


def dequantize(x01: Tensor, generator: Noise = None) -> Tensor:
    """Uniform dequantization of 8-bit data in [0, 1]: (255 x + U) / 256, U ~ U[0, 1)."""
    u = _draw("uniform", x01.shape, x01.dtype, x01.device, generator)
    return (x01 * 255.0 + u) / 256.0


def scaling_log2_jacobian(sde: SDE) -> float:
    """log2 of dz/dy per dimension for the SDE's data scaling z = scale_data(y) (affine)."""
    ends = sde.scale_data(torch.tensor([0.0, 1.0], dtype=torch.float64))
    return math.log2(float(ends[1] - ends[0]))


def bits_per_dim(
    score_fn: ScoreFn,
    sde: SDE,
    x01: Tensor,
    trace: str = "rademacher",
    generator: Noise = None,
    **ode_kwargs: float | str,
) -> tuple[Tensor, int]:
    """Bits/dim of 8-bit images x01 in [0, 1] (uniformly dequantized), and the solve's NFE."""
    y = sde.scale_data(dequantize(x01, generator))
    bpd, nfe = continuous_bits_per_dim(score_fn, sde, y, trace, generator, **ode_kwargs)
    return bpd + 8.0 - scaling_log2_jacobian(sde), nfe


def continuous_bits_per_dim(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    trace: str = "rademacher",
    generator: Noise = None,
    **ode_kwargs: float | str,
) -> tuple[Tensor, int]:
    """-log2 p(x) / D for continuous data already in model space (e.g. the 2-D toy sets)."""
    result = log_likelihood(score_fn, sde, x, trace, generator=generator, **ode_kwargs)
    return -result.logp / (x[0].numel() * math.log(2)), result.nfe


@dataclass
class BitsPerDim:
    """Bits/dim over a data set evaluated ``repeats`` times (fresh dequantization and probes)."""

    values: Tensor  # (repeats, N)
    indices: Tensor  # (N,) the data index of each column
    nfe_total: int  # score evaluations over all ODE solves
    solves: int

    @property
    def nfe(self) -> float:
        """Mean NFE per ODE solve."""
        return self.nfe_total / max(self.solves, 1)

    @property
    def mean(self) -> float:
        return float(self.values.mean())

    @property
    def stderr(self) -> float:
        """Standard error of the mean over data points (per-point averages over repeats)."""
        per_point = self.values.double().mean(0)
        n = per_point.numel()
        return float(per_point.std() / math.sqrt(n)) if n > 1 else float("nan")

    @property
    def estimator_stderr(self) -> float:
        """Standard error from dequantization and trace probes alone (spread across repeats)."""
        repeats, n = self.values.shape
        if repeats < 2:
            return float("nan")
        within = self.values.double().var(0).mean()
        return float(torch.sqrt(within / (repeats * n)))


def evaluate_bits_per_dim(
    score_fn: ScoreFn,
    sde: SDE,
    batches: Callable[[], Iterable[tuple[Tensor, Tensor]]],
    repeats: int = 1,
    images: bool = True,
    trace: str = "rademacher",
    seed: int = 0,
    progress: bool = False,
    num_points: int | None = None,
    **ode_kwargs: float | str,
) -> BitsPerDim:
    """Bits/dim of every ``(indices, x)`` batch of ``batches()``, ``repeats`` times (the official
    code uses 5 repeats on the test set). ``images``: 8-bit data in [0, 1], else continuous
    model-space data. Point i's noise in repeat r is drawn from ``batch_seed(seed, r, i)``.
    ``progress``: a bar over points x repeats (with an ETA when ``num_points`` is given)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    fn = bits_per_dim if images else continuous_bits_per_dim
    rows, nfes = [], []
    indices = torch.zeros(0, dtype=torch.long)
    total = None if num_points is None else num_points * repeats
    with progress_bar(total=total, desc="bits/dim", unit="point", enabled=progress) as bar:
        for r in range(repeats):
            row, seen = [], []
            for idx, x in batches():
                noise = PointNoise([batch_seed(seed, r, int(i)) for i in idx])
                bpd, nfe = fn(score_fn, sde, x, trace, noise, **ode_kwargs)
                row.append(bpd.cpu())
                seen.append(torch.as_tensor(idx, dtype=torch.long).reshape(-1))
                nfes.append(nfe)
                bar.update(len(x))
                bar.set_postfix(repeat=f"{r + 1}/{repeats}", nfe=nfe)
            rows.append(torch.cat(row) if row else torch.zeros(0))
            indices = torch.cat(seen) if seen else indices
    return BitsPerDim(torch.stack(rows), indices, sum(nfes), len(nfes))


def merge_bits_per_dim(parts: Sequence[BitsPerDim]) -> BitsPerDim:
    """One result from shards of the data (e.g. one per rank), columns in data-index order."""
    indices = torch.cat([p.indices for p in parts])
    order = torch.argsort(indices)
    values = torch.cat([p.values for p in parts], dim=1)[:, order]
    return BitsPerDim(
        values, indices[order], sum(p.nfe_total for p in parts), sum(p.solves for p in parts)
    )


def gather_bits_per_dim(local: BitsPerDim) -> BitsPerDim:
    """Merge every rank's shard (all ranks get the result): the only collective of a
    likelihood evaluation, so ranks whose solvers took different step counts never wait on each
    other mid-solve. Without a process group it returns ``local``."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    parts: list[BitsPerDim | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return merge_bits_per_dim([p for p in parts if p is not None])
