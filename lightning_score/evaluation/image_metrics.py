"""FID / IS / KID as torchmetrics metrics (their states and DDP sync) fed by one Inception pass
per batch; metric names carry the sample count (``fid_50k``): FID is biased upwards for small
counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.aggregation import SumMetric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from lightning_score.evaluation.inception import FeatureExtractor, InceptionUnavailableError
from lightning_score.evaluation.reference import ReferenceStats
from lightning_score.images import to_uint8

METRIC_NAMES = ("fid", "is", "kid")


# -- the metrics ---------------------------------------------------------------------------------
class _Precomputed(nn.Module):
    """The "feature network" the torchmetrics metrics see: features were computed already."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


class FrechetDistance(FrechetInceptionDistance):
    """torchmetrics' FID (same states, updates and DDP sync) with a faster, symmetric trace term.

    Tr (S_r S_f)^1/2 = sum_i sqrt(lambda_i(R S_f R)) with R = S_r^1/2, since S_r S_f = R (R S_f R)
    R^-1 has the eigenvalues of the symmetric PSD matrix R S_f R. torchmetrics instead takes the
    general ``eigvals`` of S_r S_f, several times slower at d = 2048 and prone to spurious complex
    parts. R depends only on the real statistics: it is computed once and reused while they stay
    fixed (reference statistics, or ``reset_real_features=False``).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        # (fingerprint of the synced real states, real mean, sqrt of real covariance)
        self._real_root: tuple[tuple[float, ...], Tensor, Tensor] | None = None

    @staticmethod
    def _moments(total: Tensor, outer: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
        mean = total / n
        return mean, (outer - n * torch.outer(mean, mean)) / (n - 1)

    def compute(self) -> Tensor:
        if self.real_features_num_samples < 2 or self.fake_features_num_samples < 2:
            raise RuntimeError("FID needs at least 2 real and 2 generated samples")
        # Runs on synced states; the fingerprint notices any change of the real statistics.
        key = (
            float(self.real_features_num_samples),
            float(self.real_features_sum.sum()),
            float(self.real_features_cov_sum.trace()),
        )
        if self._real_root is None or self._real_root[0] != key:
            mean_r, cov_r = self._moments(
                self.real_features_sum, self.real_features_cov_sum, self.real_features_num_samples
            )
            w, v = torch.linalg.eigh(cov_r)
            self._real_root = (key, mean_r, (v * w.clamp(min=0).sqrt()) @ v.T)
        _, mean_r, root = self._real_root
        mean_f, cov_f = self._moments(
            self.fake_features_sum, self.fake_features_cov_sum, self.fake_features_num_samples
        )
        trace_r = (root * root).sum()  # Tr S_r = ||R||_F^2
        cross = torch.linalg.eigvalsh(root @ cov_f @ root).clamp(min=0).sqrt().sum()
        fid = (mean_r - mean_f).square().sum() + trace_r + cov_f.trace() - 2 * cross
        return fid.to(self.orig_dtype)


def count_suffix(n: int) -> str:
    """50000 -> "50k", 2500 -> "2500": the sample count that goes into every metric name."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


#: images per Inception call when the pass is counted (a progress step of ~5 s on a CPU)
INCEPTION_PART = 32


class ImageMetrics(nn.Module):
    """torchmetrics FID / IS / KID fed by one extractor pass per batch.

    Under DDP each rank updates with its own samples and torchmetrics sums (FID) or gathers
    (IS, KID) the states in ``compute``. Reference statistics enter the real-image states on
    rank 0 only, so the sync counts them once. KID's random subsets and IS's shuffle come from
    ``seed``: the same on every rank and every call, so values repeat exactly.
    """

    def __init__(
        self,
        metrics: Sequence[str],
        extractor: FeatureExtractor,
        kid_subset_size: int = 1000,
        kid_subsets: int = 100,
        is_splits: int = 10,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.seed = seed
        unknown = set(metrics) - set(METRIC_NAMES)
        if unknown or not metrics:
            raise ValueError(
                f"unknown metrics {sorted(unknown)}: choose from {', '.join(METRIC_NAMES)}"
            )
        if "is" in metrics and not extractor.has_logits:
            raise InceptionUnavailableError(
                f"the Inception Score needs logits, which extractor {extractor.name!r} "
                f"(source {getattr(extractor, 'source', '?')}) does not provide: run once with "
                "network access so torch-fidelity downloads its weights, or drop 'is'"
            )
        self.extractor = extractor
        self.names = tuple(dict.fromkeys(metrics))
        d = extractor.num_features
        self.fid = FrechetDistance(feature=_Precomputed(d)) if "fid" in metrics else None
        self.kid = (
            KernelInceptionDistance(
                feature=_Precomputed(d), subset_size=kid_subset_size, subsets=kid_subsets
            )
            if "kid" in metrics
            else None
        )
        self.inception_score = (
            InceptionScore(feature=_Precomputed(0), splits=is_splits) if "is" in metrics else None
        )
        self.kid_subset_size = kid_subset_size
        # Synced counts: of generated images (for the metric names) and of KID's real features.
        self.num_generated = SumMetric()
        self.kid_real_count = SumMetric()

    @torch.no_grad()
    def update(self, images: Tensor, real: bool = False) -> None:
        """Add a batch of images in [0, 1] or uint8 (N, C, H, W)."""
        feats = self.extractor.features(to_uint8(images))
        n = feats["pool"].shape[0]
        (self.kid_real_count if real else self.num_generated).update(float(n))
        if self.fid is not None:
            self.fid.update(feats["pool"], real=real)
        if self.kid is not None:
            self.kid.update(feats["pool"], real=real)
        if self.inception_score is not None and not real:
            self.inception_score.update(feats["logits"])

    def update_counted(self, images: Tensor, bar: Any, part: int = INCEPTION_PART) -> None:
        """:meth:`update` in parts of ``part`` images, counted on ``bar``: the Inception pass over
        a large last batch takes a minute on a CPU and would otherwise show nothing."""
        for chunk in images.split(part):
            self.update(chunk)
            bar.update(len(chunk))

    def set_reference(self, stats: ReferenceStats, rank: int = 0) -> None:
        """Load reference statistics as the real-image states (counted on rank 0 only)."""
        if stats.dim != self.extractor.num_features:
            raise ValueError(
                f"reference statistics are {stats.dim}-d but extractor {self.extractor.name!r} "
                f"gives {self.extractor.num_features}-d features: recompute them with `lscore stats`"
            )
        if stats.extractor != self.extractor.name:
            raise ValueError(
                f"reference statistics were made with {stats.extractor!r}, the metrics use "
                f"{self.extractor.name!r}: recompute them with `lscore stats`"
            )
        keep = rank == 0
        if self.fid is not None:
            n = stats.num_samples
            mu = torch.as_tensor(stats.mu, dtype=torch.float64, device=self.fid.device)
            sigma = torch.as_tensor(stats.sigma, dtype=torch.float64, device=self.fid.device)
            # torchmetrics keeps sum(f) and sum(f f^T); rebuild them from mu and sigma.
            self.fid.real_features_sum = n * mu if keep else torch.zeros_like(mu)
            cov_sum = (n - 1) * sigma + n * torch.outer(mu, mu)
            self.fid.real_features_cov_sum = cov_sum if keep else torch.zeros_like(cov_sum)
            self.fid.real_features_num_samples = torch.tensor(
                n if keep else 0, device=self.fid.device
            )
            self.fid.reset_real_features = False
        if self.kid is not None:
            if stats.features.shape[0] < 2:
                raise ValueError(
                    "these reference statistics hold no features for KID: recompute "
                    "them with `lscore stats --kid-features 10000`"
                )
            feats = torch.as_tensor(stats.features, device=self.kid.device)
            # An empty (0, d) tensor rather than an empty list keeps the DDP gather's shapes equal.
            self.kid.real_features = [feats if keep else feats[:0]]
            self.kid.reset_real_features = False
            self.kid_real_count.reset()
            self.kid_real_count.update(float(feats.shape[0] if keep else 0))

    def compute(self) -> dict[str, float]:
        """Metric values named with the (synced) number of generated samples, e.g. ``fid_50k``.

        Under DDP every rank must call this (torchmetrics syncs inside ``compute``).
        """
        n = int(self.num_generated.compute())
        tag = count_suffix(n)
        out: dict[str, float] = {}
        if self.fid is not None:
            out[f"fid_{tag}"] = float(self.fid.compute())
        if self.inception_score is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)  # IS shuffles before splitting: same on every rank
                mean, std = self.inception_score.compute()
            out[f"is_{tag}"], out[f"is_{tag}_std"] = float(mean), float(std)
        if self.kid is not None:
            n_real = int(self.kid_real_count.compute())
            # KID averages over random subsets; they cannot be larger than either set.
            self.kid.subset_size = min(self.kid_subset_size, n, n_real)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)  # same subsets on every rank and every call
                mean, std = self.kid.compute()
            out[f"kid_{tag}"], out[f"kid_{tag}_std"] = float(mean), float(std)
        return out

    def reset(self) -> None:
        """Forget generated samples; reference states loaded by :meth:`set_reference` stay."""
        for m in (self.fid, self.kid, self.inception_score, self.num_generated):
            if m is not None:
                m.reset()
