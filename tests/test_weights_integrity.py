"""Which weights made an output, and whether they are the ones written (issue 18, items 1, 6, 9,
11, 12, 14): outputs record the checkpoint's step, EMA or raw and a SHA-256 of the weights; merge
refuses shards of different weights, never overwrites a shard and refuses broken ones; an export
carries a checksum verified on every load and is written whole or not at all; a stored config
that does not fit its weights is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lightning_score.cli import main
from lightning_score.training.checkpoint import (
    EXPORT_CHECKSUM,
    export_checksum,
    load_model,
    weights_digest,
)


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def sample(source: Path, out: Path, *extra: str) -> dict:
    flags = ["--num", "3", "--batch-size", "3", "--sampler", "euler", "--steps", "2"]
    assert main(["sample", str(source), "--out", str(out), *flags, "--no-progress", *extra]) == 0
    name = "samples.json" if "--rank" not in extra else f"samples_rank{extra[1].zfill(2)}.json"
    return json.loads((out / name).read_text())


def perturbed_copy(checkpoint: Path, path: Path, step: int) -> None:
    """``checkpoint`` with other weights (as if saved at a later step) at ``path``."""
    ckpt = torch.load(checkpoint, weights_only=True)
    for key in ("state_dict", "current_model_state"):
        for name, tensor in ckpt.get(key, {}).items():
            if tensor.is_floating_point():
                ckpt[key][name] = tensor + 0.01
    ckpt["global_step"] = step
    torch.save(ckpt, path)


def test_outputs_record_step_ema_and_weights_hash(checkpoint, tmp_path, capsys) -> None:
    loaded = load_model(checkpoint)
    expected = weights_digest(loaded.model.state_dict())
    ckpt = torch.load(checkpoint, weights_only=True)
    meta = sample(checkpoint, tmp_path / "s")
    assert meta["step"] == ckpt["global_step"] and meta["ema"] is True
    assert meta["weights_sha256"] == expected and len(expected) == 64
    raw = sample(checkpoint, tmp_path / "raw", "--no-ema")
    assert raw["ema"] is False and raw["weights_sha256"] != expected
    # the same weights through an export hash the same
    assert (
        main(["export", str(checkpoint), "--format", "safetensors", "--out", str(tmp_path / "x")])
        == 0
    )
    assert sample(tmp_path / "x", tmp_path / "sx")["weights_sha256"] == expected

    out = tmp_path / "bpd.json"
    argv = ["likelihood", str(checkpoint), "--num", "2", "--repeats", "1", "--out", str(out)]
    assert main([*argv, "--rtol", "1e-2", "--atol", "1e-2", "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert (report["step"], report["ema"], report["weights_sha256"]) == (
        meta["step"],
        True,
        expected,
    )

    ablate = ["ablate", str(checkpoint), "--samplers", "euler:2", "--num", "2", "--no-progress"]
    assert main([*ablate, "--out", str(tmp_path / "ab")]) == 0
    table = (tmp_path / "ab" / "ablation.md").read_text()
    assert f"step {meta['step']}, EMA, SHA-256 `{expected}`" in table


def test_merge_refuses_shards_of_other_weights_at_the_same_path(checkpoint, tmp_path, capsys):
    ckpt = tmp_path / "last.ckpt"  # one path, rewritten by training between the two ranks
    perturbed_copy(checkpoint, ckpt, step=88)
    sample(ckpt, tmp_path / "s", "--rank", "0", "--world-size", "2")
    perturbed_copy(ckpt, ckpt, step=500)
    sample(ckpt, tmp_path / "s", "--rank", "1", "--world-size", "2")
    err = refused(capsys, "merge", str(tmp_path / "s"))
    assert "samples_rank01.npz differs from samples_rank00.npz in step, weights_sha256" in err
    assert not (tmp_path / "s" / "samples.npz").exists()


def test_merge_never_writes_over_a_shard(checkpoint, tmp_path, capsys) -> None:
    for rank in (0, 1):
        sample(checkpoint, tmp_path, "--rank", str(rank), "--world-size", "2")
    shard = tmp_path / "samples_rank00.npz"
    before = shard.read_bytes()
    for target in (shard, shard.with_suffix(".json")):
        err = refused(capsys, "merge", str(tmp_path), "--out", str(target), "--overwrite")
        assert "is the input" in err
    err = refused(capsys, "merge", str(tmp_path), "--out", str(tmp_path / "samples_rank07.npz"))
    assert "taken for a shard" in err
    assert shard.read_bytes() == before
    assert main(["merge", str(tmp_path)]) == 0  # the shards are still whole


@pytest.mark.parametrize("damage", ["truncated", "no world_size", "not json"])
def test_merge_refuses_a_broken_shard_in_one_line(checkpoint, tmp_path, capsys, damage) -> None:
    for rank in (0, 1):
        sample(checkpoint, tmp_path, "--rank", str(rank), "--world-size", "2")
    shard, meta = tmp_path / "samples_rank01.npz", tmp_path / "samples_rank01.json"
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:200])
    elif damage == "no world_size":
        record = json.loads(meta.read_text())
        del record["world_size"]
        meta.write_text(json.dumps(record))
    else:
        meta.write_text("rank one of two\n")
    err = refused(capsys, "merge", str(tmp_path))
    assert "samples_rank01" in err and "rerun `lscore sample` for that rank" in err
    assert {"truncated": "truncated", "no world_size": "lacks world_size"}.get(
        damage, "not readable JSON"
    ) in err
    assert not (tmp_path / "samples.npz").exists()


# -- exports ---------------------------------------------------------------------------------
@pytest.fixture
def exported(checkpoint: Path, tmp_path: Path) -> Path:
    out = tmp_path / "export"
    assert main(["export", str(checkpoint), "--format", "safetensors", "--out", str(out)]) == 0
    return out


def rewrite_export(folder: Path, state=None, checksum: bool = True, **meta: str) -> None:
    """Rewrite an export's file with other metadata (and weights), re-signed unless told not."""
    from safetensors import safe_open

    file = folder / "model.safetensors"
    with safe_open(file, framework="pt") as fh:
        old = dict(fh.metadata())
    state = load_file(file) if state is None else state
    new = {**old, **meta}
    if checksum:
        new[EXPORT_CHECKSUM] = export_checksum(state, new)
    else:
        new.pop(EXPORT_CHECKSUM)
    save_file(state, file, metadata=new)


def test_flipped_bytes_in_an_export_are_refused(exported, tmp_path, capsys) -> None:
    file = exported / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[-64] ^= 0x40  # inside the last tensor: still a valid safetensors file
    file.write_bytes(bytes(data))
    assert load_file(file)  # safetensors itself notices nothing
    err = refused(capsys, "sample", str(exported), "--out", str(tmp_path / "s"))
    assert "is damaged" in err and "export it again" in err
    assert not (tmp_path / "s").exists()


def test_export_metadata_is_under_the_checksum_and_old_exports_are_named(
    exported, tmp_path, capsys
):
    rewrite_export(exported, checksum=False, step="12")
    err = refused(capsys, "sample", str(exported), "--out", str(tmp_path / "s"))
    assert "has no checksum" in err and "lscore export" in err
    rewrite_export(exported, step="12")
    file = exported / "model.safetensors"
    edited = bytearray(file.read_bytes())
    at = edited.index(b'"step":"12"')
    edited[at + 8 : at + 10] = b"99"  # a hand edit of the header: the checksum no longer fits
    file.write_bytes(bytes(edited))
    assert "is damaged" in refused(capsys, "sample", str(exported), "--out", str(tmp_path / "s"))


def test_bad_stored_metadata_is_one_line_that_names_the_file(exported, tmp_path, capsys) -> None:
    out = str(tmp_path / "s")
    rewrite_export(exported, weights="bogus")
    err = refused(capsys, "sample", str(exported), "--out", out)
    assert "weights='bogus'" in err and "--no-ema" not in err
    rewrite_export(exported, weights="ema", config="{not json")
    err = refused(capsys, "sample", str(exported), "--out", out)
    assert "model.safetensors" in err and "not JSON" in err


def test_a_stored_config_that_does_not_fit_its_weights(checkpoint, exported, tmp_path, capsys):
    out = str(tmp_path / "s")
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["hyper_parameters"]["config"]["model"]["kwargs"]["channels"] = [8, 32]
    torch.save(ckpt, tmp_path / "edited.ckpt")
    err = refused(capsys, "sample", str(tmp_path / "edited.ckpt"), "--out", out)
    assert "do not fit the config stored with them" in err and "where the config's network" in err

    config = json.loads((exported / "config.json").read_text())
    config["model"]["kwargs"]["channels"] = [8, 32]
    rewrite_export(exported, config=json.dumps(config))  # signed: only the fit is wrong
    err = refused(capsys, "sample", str(exported), "--out", out)
    assert "do not fit the config stored with them" in err

    ckpt["hyper_parameters"]["config"]["model"]["kwargs"]["channels"] = [8, 16]
    ckpt["hyper_parameters"]["config"]["sde"]["N"] = 10**20
    torch.save(ckpt, tmp_path / "huge_n.ckpt")
    err = refused(capsys, "sample", str(tmp_path / "huge_n.ckpt"), "--out", out)
    assert "sde.N must be a number of discretization steps in [1, 1,000,000]" in err


def test_sde_n_override_out_of_range_is_a_config_error() -> None:
    from lightning_score.experiment import load_config

    with pytest.raises(ValueError, match=r"sde.N must be .* got 100000000000000000000"):
        load_config(None, ["sde.N=100000000000000000000"])


def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(
    checkpoint, exported, tmp_path, capsys, monkeypatch
):
    import safetensors.torch
    from safetensors import SafetensorError

    def full_disk(state, path, metadata=None):
        Path(path).write_bytes(b"\0" * 1000)  # part of the file got out before the disk filled
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    before = {p.name: p.read_bytes() for p in exported.iterdir()}
    fresh = tmp_path / "fresh"
    argv = ["export", str(checkpoint), "--format", "safetensors"]
    err = refused(capsys, *argv, "--out", str(fresh))
    assert f"no space left on the device writing {fresh}: it needs about" in err
    assert "MiB are free" in err
    assert not fresh.exists()
    err = refused(capsys, *argv, "--out", str(exported), "--overwrite")
    assert {p.name: p.read_bytes() for p in exported.iterdir()} == before  # the old one is whole
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    monkeypatch.undo()
    assert main(["sample", str(exported), "--out", str(tmp_path / "s"), "--num", "2",
                 "--sampler", "euler", "--steps", "2", "--no-progress"]) == 0  # fmt: skip
    assert np.load(tmp_path / "s" / "samples.npz")["arr_0"].shape[0] == 2


def test_evaluate_records_the_weights_of_a_checkpoint_and_of_merged_samples(
    checkpoint, tmp_path, monkeypatch
) -> None:
    from ddp_eval_script import TinyExtractor
    from tiny_checkpoint import ROOT

    from lightning_score import evaluation

    monkeypatch.setattr(evaluation, "load_inception", lambda *a, **k: TinyExtractor())
    monkeypatch.setenv("LSCORE_CACHE_DIR", str(tmp_path / "cache"))
    expected = weights_digest(load_model(checkpoint).model.state_dict())
    out = tmp_path / "eval"
    argv = ["evaluate", str(checkpoint), "--num", "4", "--sample-batch-size", "4"]
    flags = ["--sampler", "euler", "--steps", "2", "--metrics", "fid", "--no-progress"]
    assert main([*argv, *flags, "--out", str(out)]) == 0
    (written,) = out.glob("last_fid_4_*.json")
    record = json.loads(written.read_text())
    assert (record["ema"], record["weights_sha256"]) == (True, expected)
    assert record["step"] == torch.load(checkpoint, weights_only=True)["global_step"]

    for rank in (0, 1):
        sample(checkpoint, tmp_path / "s", "--rank", str(rank), "--world-size", "2")
    assert main(["merge", str(tmp_path / "s")]) == 0
    merged = tmp_path / "s" / "samples.npz"
    assert main(["evaluate", str(merged), "--data-config", str(ROOT / "configs" / "quickstart.yaml"),
                 "--metrics", "fid", "--no-progress", "--out", str(out)]) == 0  # fmt: skip
    from_npz = json.loads((out / "samples_fid_3.json").read_text())
    assert (from_npz["weights_sha256"], from_npz["step"]) == (expected, record["step"])
