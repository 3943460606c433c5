"""`lscore likelihood` of a model whose data lie elsewhere on this machine (issue 18, item 22):
`--data-root` and `--override data.KEY=VALUE` say where; other keys and shape changes are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_checkpoint import tiny_quickstart_checkpoint

from lightning_score.cli import main

FAST = [
    "--split",
    "train",
    "--num",
    "2",
    "--repeats",
    "1",
    "--batch-size",
    "2",
    "--rtol",
    "1e-2",
    "--atol",
    "1e-2",
]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny model trained on a folder of 8x8 RGB images, and that folder."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"{i}.png")
    ckpt = tiny_quickstart_checkpoint(
        tmp_path_factory.mktemp("run"),
        "data.name=folder",
        f"data.root={root}",
        "data.image_size=8",
        "data.batch_size=4",
    )
    return ckpt, root


def _one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_data_that_moved_is_found_with_data_root(folder_run, tmp_path: Path, capsys) -> None:
    ckpt, root = folder_run
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    shutil.rmtree(root)
    try:
        out = tmp_path / "bpd.json"
        err = _one_line(
            capsys, ["likelihood", str(ckpt), *FAST, "--out", str(out), "--no-progress"]
        )
        assert "does not exist" in err and "--data-root DIR" in err, err
        for where in (["--data-root", str(moved)], ["--override", f"data.root={moved}"]):
            argv = ["likelihood", str(ckpt), *FAST, *where, "--out", str(out), "--overwrite"]
            assert main([*argv, "--no-progress"]) == 0
            report = json.loads(out.read_text())
            assert report["points"] == 2 and np.isfinite(report["bpd"])
    finally:
        shutil.copytree(moved, root)


def test_only_data_overrides_that_keep_the_shape(folder_run, tmp_path: Path, capsys) -> None:
    ckpt, _ = folder_run
    base = ["likelihood", str(ckpt), *FAST, "--out", str(tmp_path / "x.json")]
    err = _one_line(capsys, [*base, "--override", "sde.beta_max=30"])
    assert "data.KEY=VALUE overrides only" in err
    err = _one_line(capsys, [*base, "--override", "data.image_size=16"])
    assert "the model takes (3, 8, 8)" in err
    err = _one_line(capsys, [*base, "--override", "data.bogus=1"])
    assert "data.bogus" in err
    assert not (tmp_path / "x.json").exists()
