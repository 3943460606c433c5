"""`lscore ablate` on a real (tiny) quickstart checkpoint: table rows, NFE, plot, quality column."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_score.cli import main
from lightning_score.evaluation.sliced import sliced_wasserstein


def ablate(checkpoint: Path, out: Path, samplers: str, *extra: str) -> int:
    args = ["ablate", str(checkpoint), "--samplers", samplers, "--out", str(out), "--num", "8"]
    return main([*args, "--batch-size", "4", "--no-progress", *extra])


def read_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "ablation.csv") as fh:
        return list(csv.DictReader(fh))


def test_table_and_plot_from_a_sampler_list(checkpoint: Path, tmp_path: Path) -> None:
    assert ablate(checkpoint, tmp_path, "euler:2,euler:4,heun:2,heun:3,pc:2,pc:4") == 0
    rows = read_rows(tmp_path)
    assert list(rows[0]) == [
        "sampler",
        "steps",
        "nfe",
        "seconds",
        "samples_per_s",
        "sliced_wasserstein_to_data",
        "sliced_wasserstein_to_data_stderr",
        "within_noise_of_best",
        "within_noise_of_previous",
    ]
    assert [(r["sampler"], int(r["steps"])) for r in rows] == [
        ("euler auto", 2),
        ("euler auto", 4),
        ("heun auto", 2),
        ("heun auto", 3),
        ("pc euler_maruyama/none", 2),
        ("pc euler_maruyama/none", 4),
    ]
    # exact NFE: Euler N + 1 (Tweedie), Heun 2N + 1, PC with Euler-Maruyama and no corrector N
    assert [float(r["nfe"]) for r in rows] == [3, 5, 5, 7, 2, 4]
    families: dict[str, list[float]] = {}
    for r in rows:
        families.setdefault(r["sampler"], []).append(float(r["nfe"]))
    assert all(nfe == sorted(nfe) and len(set(nfe)) == len(nfe) for nfe in families.values())
    for r in rows:
        seconds, rate = float(r["seconds"]), float(r["samples_per_s"])
        assert seconds > 0 and rate == pytest.approx(8 / seconds)
        assert (
            0 < float(r["sliced_wasserstein_to_data"]) < 8
        )  # pixels in [0, 1], 64-d unit directions
    md = (tmp_path / "ablation.md").read_text().splitlines()
    assert md[0] == (
        "| sampler | steps | nfe | seconds | samples_per_s | sliced_wasserstein_to_data ± se "
        "| within noise of |"
    )
    assert md[2 + 6] == "" and md[2 + 6 + 1].startswith(("Within noise", "No two"))
    png = (tmp_path / "ablation.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    # one sample grid per setting, named by row, family and steps
    grids = sorted(p.name for p in (tmp_path / "grids").glob("*.png"))
    assert grids == [
        "00_euler-auto-2.png",
        "01_euler-auto-4.png",
        "02_heun-auto-2.png",
        "03_heun-auto-3.png",
        "04_pc-euler_maruyama-none-2.png",
        "05_pc-euler_maruyama-none-4.png",
    ]


def test_settings_file_expands_lists_and_labels_families(checkpoint: Path, tmp_path: Path) -> None:
    spec = tmp_path / "samplers.yaml"
    spec.write_text(
        "- {label: heun edm, sampler: heun, schedule: edm, steps: [2, 3]}\n"
        "- {sampler: pc, predictor: reverse_diffusion, corrector: langevin, snr: 0.2, steps: 2}\n"
    )
    assert ablate(checkpoint, tmp_path / "out", str(spec), "--metric", "none") == 0
    rows = read_rows(tmp_path / "out")
    assert list(rows[0]) == ["sampler", "steps", "nfe", "seconds", "samples_per_s"]
    assert [(r["sampler"], r["nfe"]) for r in rows] == [
        ("heun edm", "5.0"),
        ("heun edm", "7.0"),
        ("pc reverse_diffusion/langevin snr=0.2", "4.0"),
    ]


class TinyExtractor(nn.Module):
    """A stand-in for Inception (the metrics engineer tests the real one): 4x4-pooled pixels."""

    name, num_features, has_logits = "tiny-test-extractor", 48, False

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pool": nn.functional.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1)}


def test_fid_column_with_reference_statistics(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from sklearn.datasets import load_digits

    from lightning_score import evaluation as metrics

    monkeypatch.setattr(metrics, "load_inception", lambda *a, **k: TinyExtractor())
    digits = torch.from_numpy(load_digits().images[:64]).float().div(16).unsqueeze(1)
    metrics.compute_reference_stats([digits], TinyExtractor(), kid_features=0).save(
        tmp_path / "ref.npz"
    )
    args = ("--metric", "fid", "--ref-stats", str(tmp_path / "ref.npz"), "--num", "64")
    assert ablate(checkpoint, tmp_path / "out", "pc:2", *args) == 0
    (row,) = read_rows(tmp_path / "out")
    # an almost untrained model's samples are far from the digits: FID well above 0
    assert float(row["fid_64"]) > 0.1
    # statistics of another network with features of the same size are refused before sampling
    stats = metrics.ReferenceStats.load(tmp_path / "ref.npz")
    stats.extractor = "another-48-d-network"
    stats.save(tmp_path / "other.npz")
    other = ("--metric", "fid", "--ref-stats", str(tmp_path / "other.npz"), "--num", "64")
    assert ablate(checkpoint, tmp_path / "out2", "pc:2", *other) == 2
    assert "holds 'another-48-d-network' features" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_bad_settings_fail_before_sampling(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ablate(checkpoint, tmp_path, "euler:2,rk45:3") == 2
    assert "unknown sampling.sampler 'rk45'" in capsys.readouterr().err
    spec = tmp_path / "bad.yaml"
    spec.write_text("- {sampler: heun, stepz: 3}\n")
    assert ablate(checkpoint, tmp_path, str(spec)) == 2
    err = capsys.readouterr().err
    assert "unknown sampler settings ['stepz']" in err and "steps" in err
    assert not (tmp_path / "ablation.csv").exists()


def test_sliced_wasserstein_is_zero_on_itself_and_sees_a_shift() -> None:
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    assert sliced_wasserstein(x, x) == 0
    # Shifting by the all-ones vector (norm 4) moves a projection on a uniform unit direction u
    # by 4 |u_1|, with E|u_1| = Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)) = 0.2026 in 16 dims;
    # 128 directions give a standard error of about 0.05.
    expected = 4 * math.gamma(8) / (math.sqrt(math.pi) * math.gamma(8.5))
    assert sliced_wasserstein(x, x + 1) == pytest.approx(expected, abs=0.2)


def test_identical_settings_are_reported_within_noise(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same sampler twice draws the same samples: equal figures, a difference of exactly 0."""
    assert ablate(checkpoint, tmp_path, "euler:2,euler:2,heun:2") == 0
    rows = read_rows(tmp_path)
    se = [float(r["sliced_wasserstein_to_data_stderr"]) for r in rows]
    assert all(s > 0 for s in se) and se[0] == se[1]
    assert rows[1]["within_noise_of_previous"] == "True"
    out = capsys.readouterr().out
    line = "euler auto @ 2 steps is within noise of euler auto @ 2 steps"
    assert line in out and line in (tmp_path / "ablation.md").read_text()
    assert "sliced_wasserstein_to_data 0." in out and " ± 0." in out
    assert ablate(checkpoint, tmp_path / "plain", "euler:2", "--bootstrap", "0") == 0
    assert "sliced_wasserstein_to_data_stderr" not in read_rows(tmp_path / "plain")[0]
