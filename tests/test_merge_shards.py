"""`lscore merge`: the per-rank shards of a sharded `lscore sample` run become one .npz."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lightning_score.cli import main


def sample_rank(checkpoint: Path, out: Path, rank: int, world: int, *extra: str) -> None:
    args = ["sample", str(checkpoint), "--out", str(out), "--num", "7", "--batch-size", "2"]
    flags = ["--no-progress", "--sampler", "euler", "--steps", "2", "--seed", "5"]
    assert main([*args, *flags, "--rank", str(rank), "--world-size", str(world), *extra]) == 0


def shard(out: Path, rank: int) -> np.ndarray:
    with np.load(out / f"samples_rank{rank:02d}.npz") as data:
        return data["arr_0"]


def test_merge_joins_all_ranks_in_order(checkpoint: Path, tmp_path: Path, capsys) -> None:
    for rank in (2, 0, 1):  # ranks finish in any order
        sample_rank(checkpoint, tmp_path, rank, 3)
    assert main(["merge", str(tmp_path)]) == 0
    with np.load(tmp_path / "samples.npz") as data:
        merged = data["arr_0"]
    # 7 samples over 3 ranks: 3 + 2 + 2, rank 0 first; no two ranks share noise
    expected = np.concatenate([shard(tmp_path, r) for r in range(3)])
    assert merged.shape == (7, 8, 8, 3) and np.array_equal(merged, expected)
    assert len({m.tobytes() for m in merged}) == 7
    record = json.loads((tmp_path / "samples.json").read_text())
    assert record["num"] == 7 and record["world_size"] == 3 and record["seed"] == 5
    assert record["shards"] == [f"samples_rank{r:02d}.npz" for r in range(3)]
    assert "7 samples from 3 ranks" in capsys.readouterr().out

    # what was written is kept unless asked
    assert main(["merge", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["merge", str(tmp_path), "--overwrite"]) == 0


def test_merge_refuses_incomplete_or_mixed_shards(checkpoint: Path, tmp_path: Path, capsys) -> None:
    sample_rank(checkpoint, tmp_path, 0, 3)
    sample_rank(checkpoint, tmp_path, 2, 3)
    assert main(["merge", str(tmp_path)]) == 2
    assert "missing [1]: rerun those ranks" in capsys.readouterr().err
    assert not (tmp_path / "samples.npz").exists()

    sample_rank(checkpoint, tmp_path, 1, 3, "--seed", "6")  # another run's rank 1
    assert main(["merge", str(tmp_path)]) == 2
    assert "differs from samples_rank00.npz in seed" in capsys.readouterr().err

    assert main(["merge", str(tmp_path / "empty")]) == 2
    assert "no samples_rank*.npz" in capsys.readouterr().err


def test_merged_file_is_what_evaluate_reads(checkpoint: Path, tmp_path: Path) -> None:
    from lightning_score.commands.evaluate import _npz_images

    for rank in range(2):
        sample_rank(checkpoint, tmp_path, rank, 2)
    assert main(["merge", str(tmp_path), "--out", str(tmp_path / "all.npz")]) == 0
    images = _npz_images(tmp_path / "all.npz", None)
    assert images.shape == (7, 3, 8, 8)
