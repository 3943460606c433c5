"""What commands write: never a silent replacement of an existing output, never the input, whole
files or none, and a bad destination refused before the sampling or metric work starts.

``lscore evaluate`` and ``likelihood`` are covered in test_evaluate_cli.py (their fixtures live
there), ``convert`` in test_official_checkpoint.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lightning_score import outputs
from lightning_score.cli import main
from lightning_score.sampling import generate as generate_module


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def sample(checkpoint: Path, out: Path, *extra: str) -> int:
    args = ["sample", str(checkpoint), "--out", str(out), "--num", "3", "--batch-size", "3"]
    return main([*args, "--no-progress", "--sampler", "euler", "--steps", "2", *extra])


def test_sample_twice_refuses_to_replace_unless_overwrite(checkpoint, tmp_path, capsys):
    assert sample(checkpoint, tmp_path, "--seed", "1") == 0
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(first) == {"samples.npz", "samples_grid.png", "samples.json"}
    assert sample(checkpoint, tmp_path, "--seed", "2") == 2
    err = one_line_error(capsys)
    assert "samples.npz exists" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first  # nothing replaced
    assert sample(checkpoint, tmp_path, "--seed", "2", "--overwrite") == 0
    assert json.loads((tmp_path / "samples.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(first)  # no temp files left


def test_sample_refuses_a_bad_destination_before_sampling(
    checkpoint, tmp_path, capsys, monkeypatch
):
    def never(*args, **kwargs):
        raise AssertionError("sampled before checking --out")

    monkeypatch.setattr(generate_module, "generate", never)
    a_file = tmp_path / "taken"
    a_file.write_text("mine")
    assert sample(checkpoint, a_file) == 2  # --out names an existing file
    assert "taken exists and is not a directory" in one_line_error(capsys)
    assert sample(checkpoint, a_file / "below") == 2  # cannot be created
    assert "taken exists and is not a directory" in one_line_error(capsys)
    assert a_file.read_text() == "mine"


def test_ablate_twice_refuses_to_replace_unless_overwrite(checkpoint, tmp_path, capsys):
    argv = ["ablate", str(checkpoint), "--samplers", "euler:2", "--num", "3", "--metric", "none"]
    argv += ["--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    table = (tmp_path / "ablation.csv").read_bytes()
    assert main(argv) == 2
    assert "ablation.csv exists" in one_line_error(capsys)
    assert (tmp_path / "ablation.csv").read_bytes() == table
    assert main([*argv, "--overwrite"]) == 0


def test_atomic_path_replaces_only_a_whole_file(tmp_path):
    target = tmp_path / "samples.npz"
    np.savez(target, np.zeros(3))
    with pytest.raises(OSError, match="disk full"), outputs.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npz" and tmp != target
        tmp.write_bytes(b"PK half")
        raise OSError("disk full")
    with np.load(target) as data:  # the old file, whole
        assert data["arr_0"].tolist() == [0, 0, 0]
    assert [p.name for p in tmp_path.iterdir()] == ["samples.npz"]  # no temp file left
    with outputs.atomic_path(target) as tmp:
        np.savez(tmp, np.ones(2))  # numpy keeps a name that ends in .npz
    with np.load(target) as data:
        assert data["arr_0"].tolist() == [1, 1]
    assert [p.name for p in tmp_path.iterdir()] == ["samples.npz"]


def test_check_outputs_refuses_the_input_even_with_overwrite(tmp_path):
    source = tmp_path / "model.ckpt"
    source.write_bytes(b"weights")
    alias = tmp_path / "sub" / ".." / "model.ckpt"
    with pytest.raises(outputs.OutputError, match="is the input"):
        outputs.check_outputs([alias], overwrite=True, inputs=[source])
    with pytest.raises(outputs.OutputError, match="is a directory"):
        outputs.check_outputs([tmp_path], overwrite=True)
    outputs.check_outputs([tmp_path / "new" / "out.json"], overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]  # nothing created yet


def test_export_refuses_a_folder_with_files_or_the_input_folder(checkpoint, tmp_path, capsys):
    argv = ["export", str(checkpoint), "--format", "safetensors"]
    assert main([*argv, "--out", str(tmp_path / "st")]) == 0
    first = (tmp_path / "st" / "model.safetensors").read_bytes()
    assert main([*argv, "--out", str(tmp_path / "st")]) == 2
    assert "st exists and is not empty" in one_line_error(capsys)
    # an export of the export into its own folder would write over what it reads
    again = ["export", str(tmp_path / "st"), "--format", "safetensors", "--overwrite"]
    assert main([*again, "--out", str(tmp_path / "st")]) == 2
    assert "holds the input" in one_line_error(capsys)
    assert (tmp_path / "st" / "model.safetensors").read_bytes() == first
    assert main([*argv, "--out", str(tmp_path / "st"), "--overwrite"]) == 0
