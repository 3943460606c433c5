"""EDM end to end on digits: a short training with EDM's settings learns, its per-sigma loss is
plotted on a log axis, and its checkpoint samples, converts and has a likelihood."""

from __future__ import annotations

import argparse
import csv
import itertools
import json
from pathlib import Path

import pytest
import torch

from lightning_score.cli import main
from lightning_score.commands import convert
from lightning_score.experiment import load_config
from lightning_score.nets.official_layout import to_official_state_dict
from lightning_score.training.checkpoint import load_score_model
from lightning_score.training.run import train

ROOT = Path(__file__).resolve().parents[1]

EDM = [
    "sde.name=edm",
    "model.parameterization=edm",
    "model.sigma_data=0.5",
    "loss.weighting=edm",
    "loss.time_sampler=lognormal",
    "loss.eps=0.002",
    "sampling.sampler=heun",
    "sampling.schedule=edm",
    "sampling.steps=8",
]


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("edm")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(
            ROOT / "configs" / "quickstart.yaml",
            [
                *EDM,
                f"out_dir={out}",
                "model.name=ncsnpp_tiny",
                "trainer.max_steps=240",
                "trainer.val_check_interval=60",
                "loss.t_bins=6",
                "ema.decay=0.9",
                "checkpoint.every_n_steps=120",
                "sample_grid.every_n_steps=240",
                "sample_grid.num=16",
            ],
        )
        run_dir = train(cfg)
    finally:
        torch.set_num_threads(threads)
    return run_dir


def test_edm_training_learns_and_plots_loss_per_sigma(edm_run: Path) -> None:
    with open(edm_run / "logs" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(val) == 4 and val[-1] < 0.7 * val[0], val
    bins = sorted(k for k in rows[0] if k.startswith("val_loss_t/"))
    # six geometric bins over [0.002, 80]; the lowest holds ~0.3% of EDM's log-normal sigmas
    # and may stay empty on a small validation set (empty bins are not logged)
    assert len(bins) >= 5, bins
    edges = sorted({float(e) for k in bins for e in k.removeprefix("val_loss_t/").split("-")})
    assert edges[-1] == 80.0 and edges[0] <= 0.0117
    ratios = [b / a for a, b in itertools.pairwise(edges)]
    assert max(ratios) / min(ratios) < 1.01  # geometric bins in sigma: five decades of noise
    assert (edm_run / "per_t_loss.png").stat().st_size > 0
    assert (edm_run / "samples" / "samples_step0000240.png").is_file()


def test_edm_checkpoint_samples_and_has_a_likelihood(edm_run: Path, tmp_path: Path) -> None:
    ckpt = edm_run / "checkpoints" / "last.ckpt"
    _model, cfg = load_score_model(ckpt)
    assert cfg.sde.name == "edm" and cfg.model.parameterization == "edm"
    out = tmp_path / "samples"
    args = ["sample", str(ckpt), "--num", "8", "--batch-size", "8", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    meta = json.loads((out / "samples.json").read_text())
    assert meta["nfe"] == 2 * 8 + 1 and meta["sampling"]["sampler"] == "heun"
    report = tmp_path / "bpd.json"
    likelihood = ["likelihood", str(ckpt), "--num", "4", "--repeats", "1", "--out", str(report)]
    assert main(likelihood) == 0
    bpd = json.loads(report.read_text())["bpd"]
    assert 0 < bpd < 20, bpd  # 8-bit digits: somewhere between perfect and uniform noise (8)


def test_edm_network_converts_from_the_official_layout(edm_run: Path, tmp_path: Path) -> None:
    """An NCSN++ trained under EDM's row, saved in score_sde_pytorch's layout, converts back."""
    model, _ = load_score_model(edm_run / "checkpoints" / "last.ckpt")
    official = tmp_path / "checkpoint_1.pth"
    torch.save({"model": to_official_state_dict(model.net), "ema": {}, "step": 240}, official)
    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    out = tmp_path / "converted.ckpt"
    flags = ["--config", "ncsnpp_tiny", "--image-size", "8", "--channels", "1", "--sde", "edm"]
    assert convert.run(parser.parse_args([str(official), *flags, "--out", str(out)])) == 0
    converted, cfg = load_score_model(out, ema=False)
    assert cfg.sde.name == "edm" and cfg.model.parameterization == "edm"
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.01, 5.0])
    with torch.no_grad():
        torch.testing.assert_close(converted(x, t), model(x, t))
