"""``ScorePipeline``: one object for notebooks, shaped after diffusers' pipelines.

``ScorePipeline.from_pretrained(path)`` takes a training checkpoint, an export or a diffusers
folder; calling it samples, and its methods score likelihoods, inpaint, colorize and sample
classes. Nothing here samples or solves by itself: every call goes through the library functions
the commands use (``sampling.generate``, ``evaluation.likelihood.evaluate_bits_per_dim``,
``conditioning.inverse.solve_inverse``, ``conditioning.class_conditional.sample_classes``), so
a pipeline call with the command's seed and settings gives the command's numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_score.config import ExperimentConfig, SamplingConfig
from lightning_score.data import data_shape
from lightning_score.images import to_data_space, to_uint8
from lightning_score.nets import ScoreModel
from lightning_score.sde import SDE
from lightning_score.training.checkpoint import export_file, load_score_model, score_model_with

if TYPE_CHECKING:
    from PIL.Image import Image

    from lightning_score.conditioning.classifier import NoiseConditionalClassifier
    from lightning_score.conditioning.operators import LinearOperator


@dataclass
class PipelineOutput:
    """Samples in the data's range: images in [0, 1] as (N, C, H, W) floats, 2-D points as the
    data set gives them; ``nfe``: score evaluations per sample trajectory."""

    samples: Tensor
    nfe: float

    @property
    def uint8(self) -> Tensor:
        """The images as uint8 (N, C, H, W), rounded as ``lscore sample`` saves them."""
        if self.samples.dim() != 4:
            raise ValueError("these samples are points, not images: use .samples")
        return to_uint8(self.samples, rgb=False)

    @property
    def images(self) -> list[Image]:
        """The images as PIL images (mode L or RGB)."""
        from torchvision.transforms.functional import to_pil_image

        return [to_pil_image(image) for image in self.uint8]


@dataclass
class LikelihoodOutput:
    """Bits/dim per data point (``bpd``; for 2-D points, -log2 p / 2) and the ODE solve's NFE."""

    bpd: Tensor
    nfe: float


def _sampling(base: SamplingConfig, given: dict[str, Any]) -> SamplingConfig:
    """``base`` with the fields given (``None`` keeps the base's); like ``lscore sample``, a
    sampler other than pc drops a corrector it did not ask for."""
    names = {f.name for f in dataclasses.fields(SamplingConfig)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(
            f"unknown sampling setting(s) {', '.join(unknown)}: choose from {', '.join(sorted(names))}"
        )
    given = {k: v for k, v in given.items() if v is not None}
    cfg = dataclasses.replace(base, **given)
    if cfg.sampler != "pc" and "corrector" not in given:
        cfg = dataclasses.replace(cfg, corrector="none")
    return cfg


def _images01(images: Tensor | Sequence[Image], shape: Sequence[int]) -> Tensor:
    """uint8 or [0, 1] float images (N, C, H, W), or PIL images, at the model's shape."""
    from lightning_score.conditioning.inputs import to_shape

    if not isinstance(images, Tensor):
        from torchvision.transforms.functional import pil_to_tensor

        images = torch.stack([pil_to_tensor(image) for image in images])
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError("float images must be finite and lie in [0, 1] (or pass uint8 images)")
    return to_shape(x, shape)


class ScorePipeline:
    """A score model with its config: ``pipe(num=16, sampler="dpmpp_2m", steps=20, seed=0)``
    returns images and the NFE; ``.to("cuda")`` moves it."""

    def __init__(self, model: ScoreModel, config: ExperimentConfig) -> None:
        self.model = model.eval()
        self.config = config

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, ema: bool = True, data: str | None = None
    ) -> ScorePipeline:
        """A training checkpoint (``.ckpt``), an export (``lscore export``) or a diffusers folder
        (UNet2DModel and scheduler; ``data`` names the data set it was trained on, as
        ``lscore convert --data``), local or a Hub repo id (OWNER/NAME, fetched with
        ``huggingface_hub``). ``ema``: the EMA weights (``False``: the raw ones)."""
        path = Path(path)
        if not path.exists() and len(path.parts) == 2 and not path.is_absolute():
            from lightning_score.interop.hub import download  # OWNER/NAME: a Hub repo

            path = download(str(path))
        if path.is_dir() and export_file(path) is None:
            from lightning_score.interop.diffusers_models import diffusers_experiment

            if data is None:
                raise ValueError(
                    f"{path} is a diffusers folder, which does not say what it was trained on: "
                    "pass data=NAME (e.g. data='cifar10' for google/ddpm-cifar10-32)"
                )
            cfg, state = diffusers_experiment(path, [f"data.name={data}"])
            return cls(score_model_with(cfg, state, path), cfg)
        model, cfg = load_score_model(path, ema=ema)
        return cls(model, cfg)

    @property
    def sde(self) -> SDE:
        return self.model.sde

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def data_shape(self) -> tuple[int, ...]:
        return data_shape(self.config.data)

    def to(self, device: str | torch.device) -> ScorePipeline:
        self.model.to(device)
        return self

    def __call__(
        self,
        num: int | None = None,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        seed: int = 0,
        batch_size: int = 64,
        class_labels: int | Sequence[int] | None = None,
        guidance_scale: float = 1.0,
        classifier: str | Path | NoiseConditionalClassifier | None = None,
        progress: bool = False,
        **sampling: Any,
    ) -> PipelineOutput:
        """``num`` samples (16 by default) with the checkpoint's sampler settings, overridden by
        ``sampler``, ``steps`` and any other ``sampling`` field (``snr=0.16``, ...). Seeds are
        those of ``lscore sample --seed``. ``class_labels``: one sample per label (an int: ``num``
        of that class), by classifier-free guidance of a class-conditional model, or guided by
        ``classifier`` (a noisy classifier or its ``lscore train-classifier`` checkpoint), at
        ``guidance_scale``."""
        cfg = _sampling(self.config.sampling, dict(sampler=sampler, steps=steps, **sampling))
        if class_labels is not None:
            return self._classes(class_labels, num, cfg, seed, batch_size, guidance_scale,
                                 classifier, progress)  # fmt: skip
        from lightning_score.sampling.generate import generate

        num = 16 if num is None else num
        if num < 1:
            raise ValueError(f"num must be positive, got {num}")
        result = generate(
            self.model,
            self.sde,
            self.data_shape,
            cfg,
            num=num,
            batch_size=batch_size,
            seed=seed,
            device=self.device,
            progress=progress,
        )
        return PipelineOutput(to_data_space(self.sde, result.samples), result.nfe)

    def _classes(
        self,
        class_labels: int | Sequence[int],
        num: int | None,
        cfg: SamplingConfig,
        seed: int,
        batch_size: int,
        scale: float,
        classifier: str | Path | NoiseConditionalClassifier | None,
        progress: bool,
    ) -> PipelineOutput:
        from lightning_score.conditioning.class_conditional import sample_classes
        from lightning_score.conditioning.classifier import check_classifier_fits, load_classifier

        if isinstance(classifier, (str, Path)):
            classifier, classifier_cfg = load_classifier(classifier, self.device)
            check_classifier_fits(classifier_cfg, self.config)

        if isinstance(class_labels, int):
            labels = [class_labels] * (16 if num is None else num)
        else:
            labels = list(class_labels)
            if num is not None and num != len(labels):
                raise ValueError(f"num={num} but {len(labels)} class labels: pass one of them")
        result = sample_classes(
            self.model,
            self.data_shape,
            labels,
            1,
            cfg,
            classifier=classifier,
            scale=scale,
            batch_size=batch_size,
            seed=seed,
            device=self.device,
            progress=progress,
        )
        return PipelineOutput(result.samples01.flatten(0, 1), result.nfe)

    def log_likelihood(
        self,
        x: Tensor,
        *,
        seed: int = 0,
        trace: str = "rademacher",
        batch_size: int = 128,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        eps: float | None = None,
    ) -> LikelihoodOutput:
        """Bits/dim of images (uint8, or floats in [0, 1]; uniformly dequantized) or of 2-D
        points, through the probability-flow ODE from ``eps`` (default ``loss.eps``) as
        ``lscore likelihood --repeats 1`` computes them: point i is seeded as data index i."""
        from lightning_score.evaluation.likelihood import evaluate_bits_per_dim

        images = len(self.data_shape) == 3
        data = _images01(x, self.data_shape) if images else x.float()
        data = data.to(self.device)
        index = torch.arange(len(data))

        def batches():
            for start in range(0, len(data), batch_size):
                yield index[start : start + batch_size], data[start : start + batch_size]

        result = evaluate_bits_per_dim(
            self.model,
            self.sde,
            batches,
            images=images,
            trace=trace,
            seed=seed,
            eps=self.config.loss.eps if eps is None else eps,
            rtol=rtol,
            atol=atol,
        )
        return LikelihoodOutput(result.values[0], result.nfe)

    def inpaint(
        self,
        images: Tensor | Sequence[Image],
        mask: Tensor | str,
        **options: Any,
    ) -> PipelineOutput:
        """Fill in where ``mask`` is 0 (a (H, W) tensor, 1 = known, or a name as ``lscore
        inpaint --mask`` takes: left, right, top, bottom, center, random[:FRACTION])."""
        from lightning_score.conditioning.inverse import inpaint_operator
        from lightning_score.conditioning.operators import load_mask

        shape = self.data_shape
        if isinstance(mask, str):
            mask = load_mask(mask, tuple(shape[-2:]), options.get("seed", 0))
        return self.restore(images, inpaint_operator(shape, mask), **options)

    def colorize(self, images: Tensor | Sequence[Image], **options: Any) -> PipelineOutput:
        """Colour images from their grey version (grey or colour inputs; an RGB model)."""
        from lightning_score.conditioning.inverse import colorize_operator

        return self.restore(images, colorize_operator(self.data_shape), **options)

    def restore(
        self,
        images: Tensor | Sequence[Image],
        operator: LinearOperator,
        *,
        samples_per_input: int = 1,
        method: str = "projection",
        noise_std: float = 0.0,
        scale: float = 1.0,
        seed: int = 0,
        batch_size: int = 64,
        progress: bool = False,
        **sampling: Any,
    ) -> PipelineOutput:
        """Posterior samples given y = A x (+ noise ``noise_std`` with ``method="dps"``) of the
        images, as ``lscore inverse`` draws them; ``samples_per_input`` per image, input by
        input."""
        from lightning_score.conditioning.inverse import restore

        shape = self.data_shape
        if len(shape) != 3:
            raise ValueError(f"restoration needs an image model, this one models {shape} points")
        truth = _images01(images, shape)
        data_std = self.config.model.sigma_data  # the commands' default, as is 10 x for the next
        result = restore(
            self.model,
            self.sde,
            operator,
            truth,
            _sampling(self.config.sampling, sampling),
            method=method,
            noise_std=noise_std,
            samples_per_input=samples_per_input,
            scale=scale,
            data_std=data_std,
            network_sigma=None if data_std is None else 10 * data_std,
            batch_size=batch_size,
            seed=seed,
            device=self.device,
            progress=progress,
        )
        return PipelineOutput(result.samples01.flatten(0, 1), result.nfe)


__all__ = ["LikelihoodOutput", "PipelineOutput", "ScorePipeline"]
