"""Diagnostic plots written as PNG files: the loss against the step, and the validation loss per
bin of t.

Users tune noise schedules and loss weightings by where in t the loss sits and how each bin
falls over training; ``ScoreModule`` logs one scalar per bin (``val_loss_t/<lo>-<hi>``), and
this module turns those scalars into one picture. The loss curve spares plotting metrics.csv
by hand to see whether a run still learns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PER_T_PREFIX = "val_loss_t/"
_BIN = re.compile(rf"^{re.escape(PER_T_PREFIX)}([0-9.]+)-([0-9.]+)$")

Bins = list[tuple[float, float, float]]  # (t_lo, t_hi, loss) per bin, sorted by t


def binned_losses(metrics: Mapping[str, Any]) -> Bins:
    """The ``val_loss_t/<lo>-<hi>`` entries of ``metrics`` as (t_lo, t_hi, loss), sorted by t."""
    bins = []
    for key, value in metrics.items():
        match = _BIN.match(key)
        if match:
            bins.append((float(match[1]), float(match[2]), float(value)))
    return sorted(bins)


def log_axes(history: Mapping[int, Bins]) -> tuple[bool, bool]:
    """Whether t and the loss get logarithmic axes: t for geometric bins (bin widths differing
    more than tenfold, EDM's noise levels over five decades), the loss when the plotted values span
    more than a decade (a log axis over a narrow range labels only minor ticks, e.g. 1.09x10^0)."""
    bins = [b for rows in history.values() for b in rows]
    widths = [hi - lo for lo, hi, _ in bins]
    losses = [loss for _, _, loss in bins if loss > 0]
    log_t = bool(widths) and min(widths) > 0 and max(widths) / min(widths) > 10
    log_loss = bool(losses) and max(losses) / min(losses) > 10
    return log_t, log_loss


def plot_per_t_loss(history: Mapping[int, Bins], path: Path, max_lines: int = 8) -> Path:
    """Loss against t (bin centres), one line per validation step, newest darkest. Axes are
    logarithmic where the values span more than a decade (geometric bins, losses over decades).

    At most ``max_lines`` steps are drawn, evenly spaced over ``history`` and always the newest.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(history)
    if len(steps) > max_lines:
        picks = {round(i * (len(steps) - 1) / (max_lines - 1)) for i in range(max_lines)}
        steps = [steps[i] for i in sorted(picks)]
    cmap = plt.get_cmap("viridis_r")
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, step in enumerate(steps):
        bins = history[step]
        centres = [(lo + hi) / 2 for lo, hi, _ in bins]
        losses = [loss for _, _, loss in bins]
        shade = cmap(0.15 + 0.85 * (i + 1) / len(steps))
        ax.plot(centres, losses, marker="o", color=shade, label=f"step {step}")
    log_t, log_loss = log_axes({step: history[step] for step in steps})
    if log_t:
        ax.set_xscale("log")
    if log_loss:
        ax.set_yscale("log")
    else:  # plain numbers, not minor log ticks such as 9x10^-1 or an offset
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    return _save(fig, ax, path, "t (bin centre)", "validation loss", "validation loss per bin of t")


Curve = list[tuple[int, float]]  # (step, loss)


def plot_loss_curve(train: Curve, val: Curve, path: Path) -> Path:
    """Training loss (at logging steps) and validation loss against the step; the loss axis is
    logarithmic where the values span more than a decade (the first steps of a run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for curve, label, style in ((train, "train/loss", "-"), (val, "val/loss", "o-")):
        if curve:
            steps, losses = zip(*sorted(curve), strict=True)
            ax.plot(steps, losses, style, label=label, markersize=3)
    values = [loss for _, loss in train + val if loss > 0]
    if values and max(values) / min(values) > 10:
        ax.set_yscale("log")
    else:  # plain numbers, not an offset such as 1e-5 + 1.0936
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    return _save(fig, ax, path, "step", "loss", "loss")


def _save(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Labels, grid and legend of a loss figure, written to ``path``."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def bins_as_rows(step: int, bins: Sequence[tuple[float, float, float]]) -> list[dict[str, float]]:
    """Table rows (step, t_lo, t_hi, t_mid, loss), e.g. for a W&B table and a custom line chart."""
    return [
        {"step": step, "t_lo": lo, "t_hi": hi, "t_mid": (lo + hi) / 2, "loss": loss}
        for lo, hi, loss in bins
    ]
