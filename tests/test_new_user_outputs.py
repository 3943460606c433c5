"""What a new user sees (issue 18, item 23): captioned sample grids with a gap between tiles, a
start banner, a count over the last Inception pass, loss.png, and none of the dependencies'
noise that the project's users can do nothing about."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
from ddp_eval_script import TinyExtractor
from PIL import Image

from lightning_score import evaluation, progress
from lightning_score.experiment import load_config
from lightning_score.images import GAP_GREY, GRID_GAP, save_grid
from lightning_score.quiet import silence_known_noise
from lightning_score.training import logging_callbacks
from lightning_score.training.run import train

ROOT = Path(__file__).resolve().parents[1]


def test_grids_have_a_gap_between_tiles_and_a_caption(tmp_path: Path) -> None:
    black = torch.zeros(4, 1, 8, 8)  # digits: white on black, the case that merged into strips
    path = tmp_path / "grid.png"
    caption = "step 1500, dpmpp_2m, 21 NFE"
    grid = save_grid(black, path, caption)
    assert grid is not None
    tile = 32 + GRID_GAP  # 8x8 upscaled to 32, then the gap
    assert grid.shape[-2:] == (2 * tile + GRID_GAP, 2 * tile + GRID_GAP)
    assert torch.all(grid[:, :, tile : tile + GRID_GAP] == GAP_GREY)  # between the two columns
    assert torch.all(grid[:, GRID_GAP : GRID_GAP + 32, GRID_GAP : GRID_GAP + 32] == 0)  # a tile
    with Image.open(path) as png:
        assert png.text["Title"] == caption
        pixels = np.asarray(png.convert("L"))
    assert pixels.shape[0] > grid.shape[1]  # the caption strip below the grid
    strip = pixels[grid.shape[1] :]
    assert strip.min() < 100 and strip.max() == 255  # dark text on white


def test_known_noise_is_dropped_and_the_users_own_warnings_stay(caplog) -> None:
    silence_known_noise()
    lightning = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    diffusers = logging.getLogger("diffusers.models.modeling_utils")
    with caplog.at_level(logging.INFO):
        lightning.info("GPU available: False, used: False")
        lightning.info("Found current_model_state in the checkpoint. This will be used ...")
        diffusers.warning(
            "Cannot initialize model with low cpu memory usage because `accelerate` was not found"
        )
        lightning.info("GPU available but not used. You can set it by doing `Trainer(...)`")
        diffusers.warning("some other diffusers warning")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "GPU available but not used. You can set it by doing `Trainer(...)`",
        "some other diffusers warning",
    ]


def test_wandb_gets_no_anonymous_setting(tmp_path: Path, monkeypatch) -> None:
    import wandb

    from lightning_score.training.loggers import ScoreWandbLogger

    warned: list[str] = []
    monkeypatch.setattr(wandb, "termwarn", lambda message, *a, **k: warned.append(message))
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = ScoreWandbLogger(save_dir=str(tmp_path), id_file=tmp_path / "id", offline=True)
    try:
        logger.experiment  # noqa: B018  (starts the offline run: wandb validates its settings)
    finally:
        logger.finalize("success")
    assert not [m for m in warned if "anonymous" in m], warned


def test_a_run_starts_with_a_banner_counts_inception_and_draws_the_loss(
    tmp_path: Path, monkeypatch, capsys, caplog
) -> None:
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)  # every progress update prints a line
    monkeypatch.setattr(evaluation, "load_inception", lambda *a, **k: TinyExtractor())
    monkeypatch.setenv("LSCORE_CACHE_DIR", str(tmp_path / "cache"))
    images_logged: list[str] = []
    original = logging_callbacks.log_image_file

    def record(trainer, key, path, step):
        images_logged.append(key)
        original(trainer, key, path, step)

    monkeypatch.setattr(logging_callbacks, "log_image_file", record)
    silence_known_noise()
    cfg = load_config(
        ROOT / "configs" / "quickstart.yaml",
        [
            f"out_dir={tmp_path}",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "trainer.limit_val_batches=1",
            "trainer.log_every_n_steps=1",
            "model.kwargs.channels=[8,16]",
            "checkpoint.every_n_steps=4",
            "sample_grid.every_n_steps=100000",
            "sample_grid.num=4",
            "sample_grid.steps=2",
            "sampling.steps=2",
            "evaluation.every_n_steps=4",
            "evaluation.num_samples=40",
            "evaluation.batch_size=40",
            "evaluation.reference_num=16",
        ],
    )
    with caplog.at_level(logging.INFO):
        run_dir = train(cfg)
    out, err = capsys.readouterr()
    banner = out.splitlines()[:2]
    assert re.fullmatch(
        rf"run quickstart: 4 steps on cpu, unet with [0-9.]+ K parameters -> {re.escape(str(run_dir))}",
        banner[0],
    ), banner
    assert banner[1].startswith("  first: reference statistics of 16 training images for fid, kid")
    # the one sampler batch of 40 is scored in counted parts: lines before the last count
    counts = re.findall(r"^Inception features \(fid, kid\): (\d+)/40", err, re.M)
    assert counts[-1] == "40" and len(counts) >= 2, err[-2000:]
    assert (run_dir / "loss.png").stat().st_size > 0
    with Image.open(run_dir / "eval" / "eval_step0000004.png") as png:
        assert re.fullmatch(r"step 4, pc, \d+ NFE", png.text["Title"]), png.text
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    curve = next(v for k, v in ckpt["callbacks"].items() if "LossCurvePlot" in k)
    assert [s for s, _ in curve["train"]] == [1, 2, 3, 4]  # logging every step
    # kept for a resumed run's plot; step 4's validation runs after step 4's checkpoint is saved
    assert [s for s, _ in curve["val"]] == [2]
    assert images_logged.count("train/loss_plot") >= 2  # after each validation, and at the end
    assert f"loss curve: {run_dir / 'loss.png'}" in out
    noise = ("v_num", "Trainable params", "GPU available:", "💡", "`Trainer.fit` stopped")
    shown = out + err + caplog.text
    assert not [n for n in noise if n in shown], [n for n in noise if n in shown]
