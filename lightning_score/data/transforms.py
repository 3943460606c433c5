"""Image transforms of the paper's data pipelines (torchvision v2)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2


def image_transform(size: int, random_flip: bool, center_crop: int | None = None) -> v2.Compose:
    """PIL/uint8 image -> float tensor in [0, 1], optionally cropped, resized and flipped."""
    steps: list = [v2.ToImage()]
    if center_crop is not None:
        steps.append(v2.CenterCrop(center_crop))
    steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    if random_flip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)
