"""Reference statistics of a data set (FID's mu and sigma, a feature subset for KID), computed
once per data set and cached by content: a hash of the exact uint8 images and the extractor."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_score.evaluation.inception import FeatureExtractor
from lightning_score.images import load_numpy, to_uint8
from lightning_score.progress import progress_bar


# -- reference statistics ------------------------------------------------------------------------
@dataclass
class ReferenceStats:
    """Inception statistics of a reference set: FID's mu/sigma and a feature subset for KID."""

    mu: np.ndarray  # (d,)
    sigma: np.ndarray  # (d, d), unbiased covariance
    num_samples: int
    features: np.ndarray  # (k, d) float32, a fixed random subset for KID (k may be 0)
    extractor: str

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:  # np.savez would append ".npz" to other suffixes
            np.savez(
                f,
                mu=self.mu,
                sigma=self.sigma,
                num_samples=np.int64(self.num_samples),
                features=self.features,
                extractor=np.str_(self.extractor),
            )

    @classmethod
    def load(
        cls, path: str | Path, expected_dim: int | None = None, extractor: str | None = None
    ) -> ReferenceStats:
        """Read a stats file; ``expected_dim`` guards against stats of another feature layer,
        ``extractor`` (a name) against another network's features of the same size."""
        with load_numpy(path) as data:
            missing = {"mu", "sigma", "num_samples", "features", "extractor"} - set(data.files)
            if missing:
                raise ValueError(
                    f"{path} is not a lightning-score stats file (missing {sorted(missing)}): "
                    "create one with `lscore stats DATA_CONFIG --out FILE.npz`"
                )
            stats = cls(
                mu=data["mu"].astype(np.float64),
                sigma=data["sigma"].astype(np.float64),
                num_samples=int(data["num_samples"]),
                features=data["features"].astype(np.float32),
                extractor=str(data["extractor"]),
            )
        d = stats.dim
        if stats.sigma.shape != (d, d) or (stats.features.size and stats.features.shape[1] != d):
            raise ValueError(
                f"{path}: inconsistent shapes mu {stats.mu.shape}, sigma {stats.sigma.shape}"
            )
        if expected_dim is not None and d != expected_dim:
            raise ValueError(
                f"{path} holds {d}-d features but the extractor gives {expected_dim}-d ones: "
                f"recompute it with `lscore stats DATA_CONFIG --out {path}` for this extractor"
            )
        if extractor is not None and stats.extractor != extractor:
            raise ValueError(
                f"{path} holds {stats.extractor!r} features, not {extractor!r}'s: recompute it "
                f"with `lscore stats DATA_CONFIG --out {path}` for this extractor"
            )
        return stats


def _counted(
    batches: Iterable[Tensor], desc: str, progress: bool, num_images: int | None
) -> Iterator[Tensor]:
    """``batches`` with a bar counting images (an ETA when ``num_images`` is known)."""
    with progress_bar(total=num_images, desc=desc, unit="image", enabled=progress) as bar:
        for images in batches:
            yield images
            bar.update(len(images))


def images_content_key(
    batches: Iterable[Tensor],
    extractor: FeatureExtractor,
    kid_features: int,
    progress: bool = False,
    num_images: int | None = None,
) -> str:
    """Cache key: sha256 of the exact uint8 images (in order) and the extractor's identity."""
    h = hashlib.sha256(f"{extractor.name}:{extractor.num_features}:{kid_features}".encode())
    for images in _counted(batches, "reading reference images", progress, num_images):
        x = to_uint8(images).contiguous()
        h.update(str(tuple(x.shape)).encode())
        h.update(x.cpu().numpy().tobytes())
    return h.hexdigest()


def compute_reference_stats(
    batches: Iterable[Tensor],
    extractor: FeatureExtractor,
    kid_features: int = 10_000,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    num_images: int | None = None,
) -> ReferenceStats:
    """mu and sigma of the extractor's pool features over image batches in [0, 1] (or uint8).

    Sums are accumulated in float64 as torchmetrics does. ``kid_features`` features, a fixed
    random subset, are kept for KID. ``progress``: a bar over the images (``num_images`` of them).
    """
    total = torch.zeros(extractor.num_features, dtype=torch.float64)
    outer = torch.zeros(extractor.num_features, extractor.num_features, dtype=torch.float64)
    kept: list[Tensor] = []
    n = 0
    for images in _counted(batches, "reference statistics", progress, num_images):
        feats = extractor.features(to_uint8(images).to(device))["pool"].cpu()
        f64 = feats.double()
        total += f64.sum(0)
        outer += f64.T @ f64
        n += feats.shape[0]
        kept.append(feats.float())
    if n < 2:
        raise ValueError(f"reference statistics need at least 2 images, got {n}")
    mu = total / n
    sigma = (outer - n * torch.outer(mu, mu)) / (n - 1)
    everything = torch.cat(kept)
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(kid_features, n)]
    return ReferenceStats(
        mu=mu.numpy(),
        sigma=sigma.numpy(),
        num_samples=n,
        features=everything[pick.sort().values].numpy(),
        extractor=extractor.name,
    )


def default_cache_dir() -> Path:
    """``$LSCORE_CACHE_DIR`` or ``~/.cache/lightning_score``."""
    return Path(os.environ.get("LSCORE_CACHE_DIR", Path.home() / ".cache" / "lightning_score"))


def cached_reference_stats(
    make_batches: Callable[[], Iterable[Tensor]],
    extractor: FeatureExtractor,
    kid_features: int = 10_000,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    progress: bool = False,
    num_images: int | None = None,
) -> tuple[ReferenceStats, Path, bool]:
    """Stats for the images ``make_batches()`` yields, from the content-keyed cache if present.

    The images are read twice on a miss (once to hash, once for the network): hashing is cheap
    next to the Inception pass. Returns the stats, the cache file and whether it was a hit.
    ``progress``: bars over both passes (``num_images``, e.g. ``len(image_batches(...))``, gives
    them an ETA).
    """
    key = images_content_key(make_batches(), extractor, kid_features, progress, num_images)
    path = Path(cache_dir or default_cache_dir()) / "stats" / f"{key}.npz"
    if path.is_file():
        return ReferenceStats.load(path, expected_dim=extractor.num_features), path, True
    stats = compute_reference_stats(
        make_batches(), extractor, kid_features, device, progress=progress, num_images=num_images
    )
    stats.save(path)
    return stats, path, False
