"""Class-conditional sampling: classifier guidance with a noisy classifier, or classifier-free
guidance of a class-conditional model; and the accuracy an independent classifier gives them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_score.conditioning.batches import Condition, sample_conditioned
from lightning_score.conditioning.classifier import NoiseConditionalClassifier, classify
from lightning_score.conditioning.guidance import (
    class_labels,
    classifier_free_guided,
    classifier_guided,
    require_conditional,
)
from lightning_score.config import SamplingConfig
from lightning_score.nets import ScoreModel


@dataclass
class ClassSamples:
    """``samples01`` (classes, K, C, H, W) in [0, 1], row i of class ``classes[i]``."""

    samples01: Tensor
    classes: list[int]
    nfe: int

    @property
    def labels(self) -> Tensor:
        """The requested class of every sample, in ``samples01.flatten(0, 1)`` order."""
        return torch.tensor(self.classes).repeat_interleave(self.samples01.shape[1])


def sample_classes(
    model: ScoreModel,
    data_shape: Sequence[int],
    classes: Sequence[int],
    per_class: int,
    cfg: SamplingConfig,
    *,
    classifier: NoiseConditionalClassifier | None = None,
    scale: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> ClassSamples:
    """``per_class`` samples of each class: guided by ``classifier`` when given (the model's
    unconditional score; a class-conditional model uses its "no class" label), else
    classifier-free guidance of a class-conditional model. ``scale`` 1 targets p(x | class)."""
    if classifier is None:
        require_conditional(model)
    num_classes = classifier.num_classes if classifier is not None else model.num_classes
    labels = class_labels(torch.tensor(list(classes)), num_classes)
    labels = labels.repeat_interleave(per_class)

    def condition_for(part: slice) -> Condition:
        wanted = labels[part].to(device)
        if classifier is not None:
            return Condition(classifier_guided(model, classifier, wanted, num_classes, scale))
        return Condition(classifier_free_guided(model, wanted, scale))

    out = sample_conditioned(
        condition_for,
        model.sde,
        data_shape,
        cfg,
        num=labels.numel(),
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
    )
    images = model.sde.unscale_data(out.samples).clamp(0, 1)
    return ClassSamples(
        images.reshape(len(classes), per_class, *data_shape), list(classes), out.nfe
    )


def judged_accuracy(judge: NoiseConditionalClassifier, result: ClassSamples) -> float:
    """The fraction of samples an (independently trained) classifier assigns to their class."""
    predicted = classify(judge, result.samples01.flatten(0, 1))
    return float((predicted == result.labels).float().mean())


#: what :func:`save_class_samples` writes into its folder
CLASS_SAMPLE_FILES = ("class_samples.npz", "class_grid.png", "metrics.json")


def save_class_samples(
    result: ClassSamples,
    out_dir: Path,
    title: str,
    summary: dict[str, float | int | str | None],
    class_names: Sequence[str] | None = None,
) -> Path:
    """``class_samples.npz`` (``arr_0`` uint8 NHWC, class by class; ``labels``), the grid
    ``class_grid.png`` (one row per class, named ``class_names``) and ``metrics.json``; each file
    whole or not at all."""
    from lightning_score.conditioning.figures import class_grid_figure
    from lightning_score.images import to_uint8_nhwc
    from lightning_score.outputs import atomic_path, write_text

    npz, png, summary_file = (out_dir / name for name in CLASS_SAMPLE_FILES)
    with atomic_path(npz) as tmp:
        np.savez(tmp, to_uint8_nhwc(result.samples01.flatten(0, 1)), labels=result.labels.numpy())
    names = list(class_names) if class_names else [f"class {c}" for c in result.classes]
    with atomic_path(png) as tmp:
        class_grid_figure(result.samples01, names, tmp, title)
    write_text(summary_file, json.dumps(summary, indent=2))
    return npz
