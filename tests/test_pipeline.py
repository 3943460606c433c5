"""ScorePipeline gives what the commands give: the same samples as `lscore sample`, the same
bits/dim as `lscore likelihood`, the same inpaintings as `lscore inpaint`, for the same seeds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_checkpoint import tiny_quickstart_checkpoint

from lightning_score.cli import main
from lightning_score.conditioning.inputs import load_images
from lightning_score.conditioning.operators import load_mask
from lightning_score.data import build_datamodule
from lightning_score.interop.export import export
from lightning_score.interop.pipeline import ScorePipeline


@pytest.fixture(scope="module")
def pipe(checkpoint: Path) -> ScorePipeline:
    return ScorePipeline.from_pretrained(checkpoint)


def _nchw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(0, 3, 1, 2)


def test_samples_are_those_of_lscore_sample(
    pipe: ScorePipeline, checkpoint: Path, tmp_path: Path
) -> None:
    flags = ["--sampler", "dpmpp_2m", "--steps", "4", "--seed", "3", "--batch-size", "4"]
    main(["sample", str(checkpoint), "--num", "6", "--out", str(tmp_path), "--no-progress", *flags])
    with np.load(tmp_path / "samples.npz") as data:
        theirs = _nchw(data["arr_0"])
    nfe = json.loads((tmp_path / "samples.json").read_text())["nfe"]
    out = pipe(6, sampler="dpmpp_2m", steps=4, seed=3, batch_size=4)
    assert out.samples.shape == (6, 1, 8, 8) and 0 <= out.samples.min() <= out.samples.max() <= 1
    assert out.uint8.dtype == torch.uint8 and out.uint8.shape == (6, 1, 8, 8)
    assert torch.equal(out.uint8.expand(-1, 3, -1, -1), theirs)  # the .npz holds RGB for FID
    assert out.nfe == nfe
    images = out.images
    assert len(images) == 6 and images[0].mode == "L" and images[0].size == (8, 8)
    assert torch.equal(torch.from_numpy(np.asarray(images[5])), out.uint8[5, 0])


def test_export_loads_the_same_weights_and_raw_ones_differ(
    pipe: ScorePipeline, checkpoint: Path, tmp_path: Path
) -> None:
    export(checkpoint, "safetensors", tmp_path / "export")
    exported = ScorePipeline.from_pretrained(tmp_path / "export")
    settings = dict(sampler="euler", steps=3, seed=1)
    assert torch.equal(exported(2, **settings).samples, pipe(2, **settings).samples)
    raw = ScorePipeline.from_pretrained(checkpoint, ema=False)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.1, 0.9])
    with torch.no_grad():  # two training steps: the samples saturate alike, the scores differ
        assert not torch.equal(raw.model(x, t), pipe.model(x, t))
    with pytest.raises(ValueError, match=r"unknown sampling setting.*stepz.*choose from"):
        pipe(2, stepz=3)


def test_log_likelihood_is_that_of_lscore_likelihood(
    pipe: ScorePipeline, checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bpd.json"
    tolerances = ["--rtol", "1e-2", "--atol", "1e-2"]
    args = ["likelihood", str(checkpoint), "--num", "2", "--repeats", "1", "--out", str(out)]
    main([*args, "--split", "test", "--batch-size", "2", "--no-progress", *tolerances])
    report = json.loads(out.read_text())
    cfg = pipe.config
    dm = build_datamodule(dataclasses.replace(cfg.data, random_flip=False), cfg.seed)
    dm.setup()
    x = torch.stack([dm.val_set[i][0] for i in range(2)])
    result = pipe.log_likelihood((x * 255).round().to(torch.uint8), rtol=1e-2, atol=1e-2)
    assert result.bpd.shape == (2,)
    assert float(result.bpd.mean()) == pytest.approx(report["bpd"], abs=1e-6)
    assert result.nfe == report["nfe"]


def test_inpaint_is_lscore_inpaint_and_keeps_the_known_pixels(
    pipe: ScorePipeline, checkpoint: Path, tmp_path: Path
) -> None:
    args = ["inpaint", str(checkpoint), "--input", "val", "--num-images", "2", "--samples", "2"]
    main([*args, "--mask", "right", "--steps", "4", "--out", str(tmp_path), "--no-progress"])
    with np.load(tmp_path / "restoration.npz") as data:
        theirs = _nchw(data["arr_0"])
    truth = load_images("val", pipe.data_shape, 2, data=pipe.config.data, seed=pipe.config.seed)
    out = pipe.inpaint(truth, "right", samples_per_input=2, steps=4)
    assert torch.equal(out.uint8.expand(-1, 3, -1, -1), theirs)
    known = load_mask("right", (8, 8)).bool()
    repeated = truth.repeat_interleave(2, dim=0)
    assert torch.allclose(out.samples[..., known], repeated[..., known], atol=1e-6)
    assert not torch.allclose(out.samples[..., ~known], repeated[..., ~known], atol=0.05)
    # a mask given as a tensor is the same mask
    assert torch.equal(
        pipe.inpaint(truth, known, samples_per_input=2, steps=4).samples, out.samples
    )


def test_colorize_refuses_a_grey_model_in_one_line(pipe: ScorePipeline) -> None:
    with pytest.raises(ValueError, match=r"colorization.*3"):
        pipe.colorize(torch.zeros(1, 1, 8, 8))


def test_bad_inputs_are_refused_in_one_line(pipe: ScorePipeline, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        pipe.inpaint(torch.full((1, 1, 8, 8), float("nan")), "right")
    with pytest.raises(ValueError, match="class-conditional"):
        pipe(class_labels=[1])
    (tmp_path / "unet").mkdir()
    with pytest.raises(ValueError, match="pass data=NAME"):
        ScorePipeline.from_pretrained(tmp_path)


def test_class_labels_steer_a_class_conditional_model(tmp_path: Path) -> None:
    ckpt = tiny_quickstart_checkpoint(tmp_path, "model.num_classes=10", "model.label_dropout=0.2")
    pipe = ScorePipeline.from_pretrained(ckpt)
    settings = dict(sampler="euler", steps=3, seed=0)
    unconditional = pipe(2, **settings).samples
    # guidance scale 0 is the "no class" score: the unconditional samples, from the same seeds
    plain = pipe(class_labels=[1, 7], guidance_scale=0.0, **settings).samples
    assert torch.allclose(plain, unconditional, atol=1e-5)
    guided = pipe(class_labels=[1, 7], guidance_scale=3.0, **settings)
    assert guided.samples.shape == (2, 1, 8, 8)
    assert not torch.allclose(guided.samples, unconditional, atol=1e-3)
    assert len(pipe(3, class_labels=4, **settings).samples) == 3
    with pytest.raises(ValueError, match="num=3 but 2 class labels"):
        pipe(3, class_labels=[1, 2])


def test_a_diffusers_folder_gives_the_checkpoints_model(
    pipe: ScorePipeline, checkpoint: Path, tmp_path: Path
) -> None:
    export(checkpoint, "diffusers", tmp_path / "hub")  # a DDPMPipeline folder
    hub = ScorePipeline.from_pretrained(tmp_path / "hub", data="digits")
    assert hub.config.sde == pipe.config.sde
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.1, 0.9])
    with torch.no_grad():
        assert torch.equal(hub.model(x, t), pipe.model(x, t))
    settings = dict(sampler="euler", steps=3, seed=2)
    assert torch.equal(hub(3, **settings).samples, pipe(3, **settings).samples)


def test_colorize_is_lscore_colorize_from_colour_or_grey_input(tmp_path: Path) -> None:
    from PIL import Image

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    gen = np.random.default_rng(0)
    for i in range(24):  # an RGB image folder: the "folder" data set
        Image.fromarray(gen.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(pictures / f"{i}.png")
    ckpt = tiny_quickstart_checkpoint(
        tmp_path / "run", "data.name=folder", f"data.root={pictures}", "data.batch_size=8"
    )
    pipe = ScorePipeline.from_pretrained(ckpt)
    assert pipe.data_shape == (3, 8, 8)
    args = ["colorize", str(ckpt), "--input", "val", "--num-images", "2", "--samples", "2"]
    assert main([*args, "--steps", "4", "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    with np.load(tmp_path / "c" / "restoration.npz") as data:
        theirs = _nchw(data["arr_0"])
    truth = load_images("val", pipe.data_shape, 2, data=pipe.config.data, seed=pipe.config.seed)
    grey = truth.mean(1, keepdim=True)  # a grey input works as well as a colour one
    out = pipe.colorize(truth, samples_per_input=2, steps=4)
    assert torch.equal(out.uint8, theirs)
    from_grey = pipe.colorize(grey, samples_per_input=2, steps=4).samples  # equal up to rounding
    assert torch.allclose(from_grey, out.samples, atol=1e-4)
