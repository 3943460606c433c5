"""Figures of conditional generation, laid out like the score-SDE blog's: one row per input with
truth | observation | several samples, and a class-conditional grid with one row per class."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor


def _show(ax, image01: Tensor) -> None:
    """One (C, H, W) image in [0, 1] on ``ax``, grey or RGB, pixels as squares."""
    img = image01.detach().float().cpu().clamp(0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(
    rows: Sequence[Sequence[Tensor]],
    path: Path,
    col_titles: Sequence[str] = (),
    row_titles: Sequence[str] = (),
    title: str | None = None,
    cell: float = 1.1,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(cell * n_cols + 0.6, cell * n_rows + 0.5), squeeze=False
    )
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            if j < len(row):
                _show(ax, row[j])
            else:
                ax.axis("off")
    for j, name in enumerate(col_titles):
        axes[0][j].set_title(name, fontsize=8)
    for i, name in enumerate(row_titles):
        axes[i][0].set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def restoration_figure(
    truth01: Tensor | None,
    observation01: Tensor,
    samples01: Tensor,
    path: Path,
    title: str | None = None,
) -> Path:
    """Rows: inputs; columns: truth (when known) | observation | samples. ``samples01`` is
    (N, K, C, H, W), the others (N, C, H, W), all in [0, 1]."""
    k = samples01.shape[1]
    rows = []
    for i in range(samples01.shape[0]):
        first = [observation01[i]] if truth01 is None else [truth01[i], observation01[i]]
        rows.append(first + list(samples01[i]))
    heads = ([] if truth01 is None else ["truth"]) + ["observation"]
    heads += [f"sample {j + 1}" for j in range(k)]
    return _grid(rows, path, col_titles=heads, title=title)


def class_grid_figure(
    samples01: Tensor, class_names: Sequence[str], path: Path, title: str | None = None
) -> Path:
    """One row per class: ``samples01`` is (classes, K, C, H, W) in [0, 1]."""
    rows = [list(samples01[i]) for i in range(samples01.shape[0])]
    return _grid(rows, path, row_titles=list(class_names), title=title, cell=0.8)
