"""Power-function EMA profiles and their post-hoc reconstruction (Karras et al. 2024, "Analyzing
and Improving the Training Dynamics of Diffusion Models", sec. 3 and app. C).

A power-function EMA with exponent gamma averages the weights of steps 1..T with the profile
p(tau) = (gamma + 1) tau^gamma / T^(gamma + 1) on [0, T]: its width relative to T,
std_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))), does not change as training goes on.
The update beta_t = (1 - 1/t)^(gamma + 1) after the t-th step gives each step t the weight
(t^(gamma+1) - (t-1)^(gamma+1)) / T^(gamma+1): exactly p integrated over that step.

Snapshots of a few profiles at several T span a space of profiles; the profile of any other
width at any T is approximated in it by least squares in L2 over tau, and the same coefficients
combine the snapshots' weights. Everything here is float64 numpy: the Gram matrices of nearby
profiles are badly conditioned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from lightning_score.training.checkpoint import LoadedModel

#: where a run keeps its power-EMA snapshots, under its run directory
SNAPSHOT_DIR = "ema_snapshots"
#: what a snapshot file says it is
SNAPSHOT_FORMAT = "lightning-score power-EMA snapshot 1"

#: a stored or wanted average: (gamma, T)
Profile = tuple[float, float]


def gamma_from_std_rel(std_rel: float) -> float:
    """The exponent whose profile has relative width ``std_rel``: the largest real root of
    (g + 2)^2 (g + 3) = s^-2 (g + 1), i.e. g^3 + 7 g^2 + (16 - s^-2) g + 12 - s^-2 = 0."""
    if not 0.0 < std_rel < 12**-0.5:  # g > 0 needs std_rel below the width of g = 0
        raise ValueError(f"std_rel must lie in (0, {12**-0.5:.4f}), got {std_rel}")
    inv = std_rel**-2.0
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def std_rel_from_gamma(gamma: float) -> float:
    return float(np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))))


def power_beta(step: int, gamma: float) -> float:
    """The decay after the ``step``-th update (1-based); the first update copies (beta 0)."""
    return (1.0 - 1.0 / step) ** (gamma + 1.0)


def step_weights(gamma: float, steps: int) -> np.ndarray:
    """The weight of each of the ``steps`` averaged steps in the online average."""
    t = np.arange(steps + 1, dtype=np.float64)
    return np.diff((t / steps) ** (gamma + 1.0))


def profile_dot(a: Profile, b: Profile) -> float:
    """<p_a, p_b> = integral of the two profiles' product over tau (closed form)."""
    (ga, ta), (gb, tb) = a, b
    m = min(ta, tb)  # m^(ga+gb+1) / (ta^(ga+1) tb^(gb+1)), as ratios: no overflow at large gamma
    return (ga + 1) * (gb + 1) / ((ga + gb + 1) * m) * (m / ta) ** (ga + 1) * (m / tb) ** (gb + 1)


@dataclass
class Reconstruction:
    """Coefficients of the stored snapshots and how far their combination is from the target."""

    coefficients: np.ndarray
    residual: float  # ||sum x_i p_i - p_r||^2 / ||p_r||^2


def solve(snapshots: Sequence[Profile], target: Profile) -> Reconstruction:
    """Least-squares coefficients x with sum_i x_i p_i closest to p_target in L2."""
    gram = np.array([[profile_dot(a, b) for b in snapshots] for a in snapshots])
    rhs = np.array([profile_dot(a, target) for a in snapshots])
    # scale rows/columns to unit diagonal: the Gram matrix spans many orders of magnitude
    scale = 1.0 / np.sqrt(np.diag(gram))
    y = np.linalg.lstsq(gram * np.outer(scale, scale), rhs * scale, rcond=1e-12)[0]
    x = y * scale
    norm = profile_dot(target, target)
    residual = float(x @ gram @ x - 2 * x @ rhs + norm) / norm
    return Reconstruction(x, max(residual, 0.0))


def representable_range(
    snapshots: Sequence[Profile], step: float, threshold: float, grid: Sequence[float]
) -> tuple[float, float] | None:
    """The widest interval of ``grid`` widths whose reconstruction at ``step`` stays under
    ``threshold`` (None if no width does)."""
    ok = [s for s in grid if solve(snapshots, (gamma_from_std_rel(s), step)).residual <= threshold]
    return (min(ok), max(ok)) if ok else None


def parse_widths(text: str) -> list[float]:
    """``0.08`` or a family ``lo:hi:count`` (evenly spaced, both ends included)."""
    parts = text.split(":")
    try:
        if len(parts) == 1:
            return [float(parts[0])]
        if len(parts) == 3:
            lo, hi, count = float(parts[0]), float(parts[1]), int(parts[2])
            if count >= 2 and lo < hi:
                return [float(v) for v in np.linspace(lo, hi, count)]
    except ValueError:
        pass
    raise ValueError(f"--std-rel takes a width (0.08) or lo:hi:count (0.02:0.20:10), got '{text}'")


#: the largest relative L2 residual of a reconstructed profile that is accepted (1 %)
MAX_RESIDUAL = 1e-2
#: the widths scanned to tell a user which ones the stored snapshots can represent
SCAN = [round(0.005 * i, 3) for i in range(1, 58)]


class PosthocEMAError(ValueError):
    """The snapshots cannot give the asked-for average (one line says why and what to do)."""


@dataclass
class Snapshot:
    """One stored snapshot file: all profiles of one step, tensors mapped lazily."""

    path: Path
    step: int
    gammas: list[float]
    std_rel: list[float]
    config: dict
    profiles: list[dict[str, Tensor]]


def load_snapshots(run_dir: Path) -> list[Snapshot]:
    """The run's snapshots in step order, each CRC-verified and loaded weights-only; refuses
    runs without them, too few, or snapshots of different widths or configs."""
    from lightning_score.experiment import from_dict
    from lightning_score.training.checkpoint import config_changes, verify_checkpoint

    files = sorted((Path(run_dir) / SNAPSHOT_DIR).glob("step*.pt"))
    if not files:
        raise PosthocEMAError(
            f"{run_dir} has no {SNAPSHOT_DIR}/: post-hoc EMA needs a run trained with "
            "ema.kind=power (an exponential EMA stores no snapshots to combine)"
        )
    out = []
    for path in files:
        verify_checkpoint(path)
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
            raise PosthocEMAError(f"{path} is not a power-EMA snapshot of lightning-score")
        out.append(
            Snapshot(path, int(data["step"]), [float(g) for g in data["gamma"]],
                     [float(s) for s in data["std_rel"]], data["config"], data["profiles"])
        )  # fmt: skip
    first = out[0]
    for snap in out[1:]:
        changed = config_changes(from_dict(first.config), from_dict(snap.config))
        if changed or snap.std_rel != first.std_rel:
            raise PosthocEMAError(
                f"{snap.path} and {first.path} come from different runs or configs "
                f"({'; '.join(changed) or 'ema.std_rel differs'}): keep one run's snapshots"
            )
    if len(out) * len(first.gammas) < 2:
        raise PosthocEMAError(
            f"{run_dir} holds {len(out)} snapshot of {len(first.gammas)} profile: the "
            "reconstruction needs at least two (train longer or snapshot more often)"
        )
    return out


def check_width(snapshots: list[Snapshot], std_rel: float) -> Reconstruction:
    """The least-squares fit of width ``std_rel`` at the last snapshot's step, refused in one line
    (naming the widths that can be) when its residual exceeds MAX_RESIDUAL."""
    basis = [(g, s.step) for s in snapshots for g in s.gammas]
    step = snapshots[-1].step
    found = solve(basis, (gamma_from_std_rel(std_rel), step))
    if found.residual > MAX_RESIDUAL:
        span = representable_range(basis, step, MAX_RESIDUAL, SCAN)
        can = f"{span[0]:.3f} to {span[1]:.3f}" if span else "none of 0.005 to 0.285"
        raise PosthocEMAError(
            f"std_rel {std_rel} cannot be represented by these snapshots (relative residual "
            f"{found.residual:.2e} > {MAX_RESIDUAL}); they represent std_rel {can}"
        )
    return found


def reconstruct(
    snapshots: list[Snapshot], std_rel: float
) -> tuple[dict[str, Tensor], Reconstruction]:
    """The weights of the power EMA of width ``std_rel`` at the last snapshot's step."""
    found = check_width(snapshots, std_rel)
    coefficients = iter(found.coefficients.tolist())
    total: dict[str, Tensor] = {}
    last = snapshots[-1].profiles[0]
    for snap in snapshots:
        for profile in snap.profiles:
            x = next(coefficients)
            for name, value in profile.items():
                if value.is_floating_point():
                    total[name] = total.get(name, 0) + x * value.double()
    state = {n: (total[n].to(v.dtype) if n in total else v.clone()) for n, v in last.items()}
    return state, found


def with_posthoc_ema(ckpt: dict[str, Any], snapshots: list[Snapshot], std_rel: float) -> dict:
    """A copy of the training checkpoint ``ckpt`` whose EMA weights are the reconstruction of
    width ``std_rel`` (raw weights and config stay the run's), recording how it was made."""
    state, found = reconstruct(snapshots, std_rel)
    out = {k: v for k, v in ckpt.items() if k != "power_ema"}  # the run's own profiles: not ours
    out["state_dict"] = {**ckpt["state_dict"], **state}
    out["posthoc_ema"] = {
        "std_rel": std_rel,
        "step": snapshots[-1].step,
        "snapshots": [s.path.name for s in snapshots],
        "coefficients": found.coefficients.tolist(),
        "residual": found.residual,
    }
    return out


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory of a checkpoint that ``lscore train`` wrote (RUN/checkpoints/x.ckpt)."""
    checkpoint = Path(checkpoint)
    if checkpoint.parent.name != "checkpoints":
        raise PosthocEMAError(
            f"{checkpoint} is not in a run's checkpoints/ folder: a post-hoc EMA needs the run "
            f"directory beside it, which holds {SNAPSHOT_DIR}/"
        )
    return checkpoint.parent.parent


def load_posthoc_model(
    checkpoint: Path, std_rel: float, map_location: str | torch.device = "cpu"
) -> LoadedModel:
    """The model of ``checkpoint`` with the EMA of width ``std_rel`` reconstructed from its run's
    snapshots up to the checkpoint's step (what ``lscore posthoc-ema`` would write for it)."""
    from lightning_score.training.checkpoint import load_checkpoint, model_of_checkpoint

    snapshots = load_snapshots(run_dir_of(checkpoint))
    ckpt = load_checkpoint(checkpoint)
    step = int(ckpt.get("global_step", -1))
    usable = [s for s in snapshots if s.step <= step]
    if not usable:
        raise PosthocEMAError(
            f"{checkpoint} is at step {step}, before the run's first snapshot "
            f"(step {snapshots[0].step}): pass a later checkpoint"
        )
    return model_of_checkpoint(
        with_posthoc_ema(ckpt, usable, std_rel), checkpoint, True, map_location
    )
