"""`lscore sample` end to end on a real (tiny) quickstart checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_score.cli import main


def run_sample(checkpoint: Path, out: Path, *extra: str) -> int:
    args = ["sample", str(checkpoint), "--out", str(out), "--num", "5", "--batch-size", "2"]
    return main([*args, "--no-progress", "--sampler", "euler", "--steps", "3", *extra])


def test_writes_uint8_nhwc_npz_grid_and_metadata(checkpoint: Path, tmp_path: Path) -> None:
    assert run_sample(checkpoint, tmp_path) == 0
    with np.load(tmp_path / "samples.npz") as data:
        assert data.files == ["arr_0"]
        images = data["arr_0"]
    # digits are 8x8 grey; FID tools read RGB, so grey is repeated to 3 channels
    assert images.shape == (5, 8, 8, 3) and images.dtype == np.uint8
    assert (images[..., 0] == images[..., 2]).all()
    with Image.open(tmp_path / "samples_grid.png") as png:  # captioned as training's grids
        assert png.text["Title"] == "step 2, euler, 4 NFE", png.text  # a 2-step run
    meta = json.loads((tmp_path / "samples.json").read_text())
    # 3 Euler steps + the Tweedie denoising step, in each of the 3 batches (2 + 2 + 1)
    assert meta["nfe"] == 4 and meta["sampling"]["sampler"] == "euler" and meta["num"] == 5


def test_same_seed_same_npz_other_seed_or_rank_differs(checkpoint: Path, tmp_path: Path) -> None:
    def images(name: str, *extra: str) -> np.ndarray:
        assert run_sample(checkpoint, tmp_path / name, *extra) == 0
        stem = "samples" if "--world-size" not in extra else "samples_rank01"
        with np.load(tmp_path / name / f"{stem}.npz") as data:
            return data["arr_0"]

    first, again = images("a", "--seed", "7"), images("b", "--seed", "7")
    assert np.array_equal(first, again)
    assert not np.array_equal(first, images("c", "--seed", "8"))
    # rank 1 of 2 writes its own share (2 of 5) from its own noise streams
    rank1 = images("d", "--seed", "7", "--rank", "1", "--world-size", "2")
    assert rank1.shape[0] == 2 and not np.array_equal(rank1, first[:2])


def test_raw_weights_and_pc_sampler(checkpoint: Path, tmp_path: Path) -> None:
    assert run_sample(checkpoint, tmp_path / "ema", "--seed", "1") == 0
    assert run_sample(checkpoint, tmp_path / "raw", "--seed", "1", "--no-ema") == 0
    with (
        np.load(tmp_path / "ema" / "samples.npz") as a,
        np.load(tmp_path / "raw" / "samples.npz") as b,
    ):
        assert not np.array_equal(a["arr_0"], b["arr_0"])  # two training steps move EMA away
    assert (
        run_sample(checkpoint, tmp_path / "pc", "--sampler", "pc", "--corrector", "langevin") == 0
    )
    assert json.loads((tmp_path / "pc" / "samples.json").read_text())["nfe"] == 6


def test_bad_sampler_names_list_the_valid_ones(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_sample(checkpoint, tmp_path, "--sampler", "pc", "--predictor", "heun") == 2
    err = capsys.readouterr().err
    assert (
        "unknown sampling.predictor 'heun'" in err
        and "euler_maruyama" in err
        and "reverse_diffusion" in err
    )
    assert run_sample(checkpoint, tmp_path, "--steps", "0") == 2
    assert "steps must be a positive integer" in capsys.readouterr().err
