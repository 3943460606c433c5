"""Streaming data (issue 22): ``lscore prepare`` writes LitData chunks that ``data.name=streaming``
reads back image for image; a run killed mid-epoch (SIGKILL) and rerun trains on the same batches
with the same noise as an uninterrupted one, with 0 and 2 loader workers, in 1 and 2 processes;
bad input ends in one line that names the fault."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from run_streaming_training import streaming_config
from run_training import RecordBatches
from test_resume import max_abs_diff, wait_for

from lightning_score.config import ConfigError, DataConfig
from lightning_score.data import DataNotFoundError, build_datamodule
from lightning_score.data.prepare import PrepareError, Source, prepare
from lightning_score.data.streaming import ChunkError, check_cache_limit, check_local_chunks
from lightning_score.training.checkpoint import load_checkpoint
from lightning_score.training.run import train

TESTS = Path(__file__).parent
SCRIPT = TESTS / "run_streaming_training.py"
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_"))},
    "OMP_NUM_THREADS": "1",
    "PYTHONWARNINGS": "ignore",
    "AWS_EC2_METADATA_DISABLED": "true",  # no wait on the instance-metadata endpoint
    "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]),
}


def image_folder(root: Path, per_class: int = 40, size: int = 8) -> dict[bytes, int]:
    """Two class subfolders of distinct random RGB PNGs; each image's bytes (CHW) -> label."""
    rng = np.random.default_rng(0)
    images = {}
    for label, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
            images[pixels.transpose(2, 0, 1).tobytes()] = label
    return images


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict[bytes, int]]:
    root = tmp_path_factory.mktemp("folder")
    return root, image_folder(root)


@pytest.fixture(scope="module")
def chunks(folder, tmp_path_factory) -> Path:
    """80 images: 72 train, 8 val, in chunks of 8 images (2 KB)."""
    out = tmp_path_factory.mktemp("chunks")
    source = Source("folder", str(folder[0]), train=True, val_fraction=0.1)
    prepare(source, str(out), workers=2, chunk_bytes="2KB", progress=False)
    return out


def read_items(split_dir: Path) -> list[tuple[bytes, int]]:
    from litdata import StreamingDataset

    data = StreamingDataset(str(split_dir))
    return [(item["image"].tobytes(), int(item["label"])) for item in data]


def test_prepare_writes_every_image_once_with_its_label(folder, chunks):
    _, images = folder
    items = read_items(chunks / "train") + read_items(chunks / "val")
    assert len(items) == 80 and len(read_items(chunks / "val")) == 8
    assert dict(items) == images  # every image, bit for bit, with its subfolder's label
    assert len({image for image, _ in items}) == 80


def test_streaming_data_module_serves_the_images_in_unit_range(folder, chunks):
    cfg = DataConfig(name="streaming", input_dir=str(chunks), image_size=8, batch_size=16)
    dm = build_datamodule(cfg, seed=0)
    dm.setup()
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == 4  # 72 images, drop_last
    x, y = batches[0]
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32
    _, images = folder
    for image, label in zip(x, y, strict=True):
        raw = (image * 255).round().to(torch.uint8).numpy().tobytes()
        assert images[raw] == int(label)
    # the next epoch is another order of the images (64 of 72: the last partial batch is dropped)
    first, second = (torch.cat([b[0] for b in epoch]) for epoch in (batches, list(loader)))
    assert not torch.equal(first, second)
    seen = {(x * 255).round().to(torch.uint8).numpy().tobytes() for x in second}
    assert len(seen) == 64 and seen <= images.keys()


def test_a_second_prepare_keeps_complete_splits_and_rewrites_an_incomplete_one(folder, chunks):
    out = chunks.parent / "rerun"
    shutil.copytree(chunks, out)
    train_index = (out / "train" / "index.json").read_bytes()
    (out / "val" / "index.json").unlink()  # val was being written when the run was killed
    source = Source("folder", str(folder[0]), train=True, val_fraction=0.1)
    done = prepare(source, str(out), workers=1, chunk_bytes="2KB", progress=False)
    assert done["train"] == "complete already, kept"
    assert (out / "train" / "index.json").read_bytes() == train_index
    assert sorted(read_items(out / "val")) == sorted(read_items(chunks / "val"))


def test_images_of_mixed_sizes_are_refused_at_prepare_naming_one(tmp_path):
    image_folder(tmp_path / "in", per_class=2)
    Image.new("RGB", (9, 8)).save(tmp_path / "in" / "dog" / "wide.png")
    source = Source("folder", str(tmp_path / "in"), train=True, val_fraction=0.2)
    with pytest.raises(PrepareError, match=r"wide.png is 9x8 but .* is 8x8: pass --image-size"):
        prepare(source, str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out" / "train" / "index.json").exists()
    # resized, they are written
    done = prepare(
        Source("folder", str(tmp_path / "in"), True, image_size=8, val_fraction=0.2),
        str(tmp_path / "out"),
        workers=1,
        progress=False,
    )
    assert done == {"train": "4 images", "val": "1 images"}


def test_a_missing_or_cut_short_chunk_is_named_before_training(chunks, tmp_path):
    broken = tmp_path / "chunks"
    shutil.copytree(chunks, broken)
    chunk = sorted((broken / "train").glob("chunk-*.bin"))[3]
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])
    with pytest.raises(ChunkError, match=rf"chunk .*{chunk.name} is damaged .* bytes"):
        check_local_chunks(broken / "train")
    chunk.unlink()
    cfg = DataConfig(name="streaming", input_dir=str(broken), image_size=8)
    with pytest.raises(ChunkError, match=rf"chunk .*{chunk.name} listed in .* is missing"):
        build_datamodule(cfg).setup()


def test_a_cache_too_small_for_a_chunk_is_refused(chunks):
    meta = check_local_chunks(chunks / "train")
    largest = max(c["chunk_bytes"] for c in meta["chunks"])
    with pytest.raises(ConfigError, match=r"data.cache_limit=1KB cannot hold two chunks"):
        check_cache_limit(meta, "1KB", "s3://bucket/cifar10/train")
    assert check_cache_limit(meta, "1MB", "s3://bucket/cifar10/train") == 1_000_000 > 2 * largest
    with pytest.raises(ConfigError, match=r"data.cache_limit='lots' is not a size"):
        check_cache_limit(meta, "lots", "s3://bucket/cifar10/train")


@pytest.mark.timeout(90)  # no network here: a retry loop must not hang the suite
def test_a_bucket_without_credentials_or_network_is_one_line(tmp_path, monkeypatch, capsys):
    from lightning_score.cli import main

    for key in [k for k in os.environ if k.startswith(("AWS_", "GOOGLE_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no wait on instance metadata
    uri = "s3://lscore-no-such-bucket/cifar10"
    cfg = DataConfig(name="streaming", input_dir=uri, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError, match=rf"^cannot read {uri}/train \(.*credentials"):
        build_datamodule(cfg).setup()
    # as lscore says it: one line
    overrides = [f"out_dir={tmp_path}", "data.name=streaming", f"data.input_dir={uri}"]
    assert main(["train", "--config", "configs/quickstart.yaml", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lscore train: error: cannot read {uri}/train (") and "\n" not in err


def test_prepare_command_writes_chunks_and_refuses_a_missing_source(folder, tmp_path, capsys):
    from lightning_score.cli import main

    out = str(tmp_path / "o")
    assert (
        main(["prepare", "folder", "--root", str(folder[0]), "--out", out, "--workers", "1"]) == 0
    )
    assert "train: 79 images" in capsys.readouterr().out
    assert len(read_items(tmp_path / "o" / "train")) == 79
    assert main(["prepare", "cifar10", "--root", str(tmp_path / "none"), "--out", out + "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lscore prepare: error: CIFAR-10 not found under") and "\n" not in err


def start(out: Path, chunks: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), str(chunks), *args],
        cwd=TESTS.parent,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a kill reaches DDP's other rank too
    )


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def record_run(out: Path, chunks: Path, processes: int, *opts: str) -> None:
    """Train with RecordBatches: here, or as a subprocess that DDP's launcher starts twice."""
    if processes == 1:
        out.mkdir(parents=True, exist_ok=True)
        train(streaming_config(out, chunks, *opts), [RecordBatches(out)])
    else:
        finish(start(out, chunks, "--record-batches", *opts))


@pytest.mark.parametrize(
    "workers,processes",
    [
        (0, 1),
        (2, 1),
        pytest.param(0, 2, marks=pytest.mark.slow),
        pytest.param(2, 2, marks=pytest.mark.slow),
    ],
)
def test_sigkill_mid_epoch_then_rerun_trains_on_the_same_batches(
    chunks, tmp_path, workers, processes
):
    """Killed after step 6 of 10 (epoch 1, batch 2 of 4; checkpoint at step 6), then rerun: steps
    7..10 see the batches, flips and times of the uninterrupted run, and end in its weights."""
    opts = [f"data.num_workers={workers}"]
    if processes == 2:
        opts += ["trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu"]
    killed = start(tmp_path / "killed", chunks, "--hang-at", "6", *opts)
    # the uninterrupted run meanwhile; one process runs here (a process start less to wait for)
    record_run(tmp_path / "whole", chunks, processes, *opts)
    wait_for(killed, tmp_path / "killed" / "hanging")
    os.killpg(killed.pid, signal.SIGKILL)  # the whole job, as a scheduler kills it
    assert killed.wait(timeout=60) == -signal.SIGKILL
    run = tmp_path / "killed" / "quickstart"
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 6
    record_run(tmp_path / "killed", chunks, processes, *opts)  # the same run again: resume=auto

    for rank in range(processes):
        whole = torch.load(tmp_path / "whole" / f"record_rank{rank}.pt")
        rerun = torch.load(tmp_path / "killed" / f"record_rank{rank}.pt")
        assert whole["batches"].shape == (10, 16 // processes, 3, 8, 8)
        assert torch.equal(rerun["batches"], whole["batches"][6:])
        assert torch.equal(rerun["times"], whole["times"][6:])
    if processes == 2:  # the ranks read disjoint shards: epoch 0 is 64 distinct images
        r0, r1 = (torch.load(tmp_path / "whole" / f"record_rank{r}.pt") for r in (0, 1))
        epoch0 = torch.cat([r0["batches"][:4], r1["batches"][:4]]).flatten(0, 1)
        assert torch.unique(epoch0.flatten(1), dim=0).shape[0] == 64
    a = load_checkpoint(tmp_path / "whole" / "quickstart" / "checkpoints" / "last.ckpt")
    b = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 10
    assert max_abs_diff(a["state_dict"], b["state_dict"]) == 0.0
    assert max_abs_diff(a["current_model_state"], b["current_model_state"]) == 0.0


def test_unreadable_images_stop_prepare_naming_the_file_or_are_left_out(tmp_path):
    image_folder(tmp_path / "in", per_class=3)
    (tmp_path / "in" / "cat" / "broken.png").write_bytes(b"not a png")
    source = Source("folder", str(tmp_path / "in"), train=True, val_fraction=0.2)
    with pytest.raises(
        PrepareError, match=r"broken.png is not a readable .*pass --bad-images skip"
    ):
        prepare(source, str(tmp_path / "out"), progress=False)
    skip = Source("folder", str(tmp_path / "in"), True, val_fraction=0.2, bad_images="skip")
    with pytest.warns(UserWarning, match="leaving out 1 image file"):
        done = prepare(skip, str(tmp_path / "out"), workers=1, progress=False)
    assert done == {"train": "5 images", "val": "1 images"}


def test_the_command_lists_every_source():
    from lightning_score.commands.prepare import SOURCE_NAMES
    from lightning_score.data.prepare import SOURCES

    assert set(SOURCE_NAMES) == set(SOURCES)


def test_a_prepare_killed_mid_way_carries_on_when_run_again(tmp_path):
    """SIGKILL to the prepare's whole process group once chunks are on disk (as a scheduler
    kills a job), then the same command: every image once, none lost or doubled."""
    images = image_folder(tmp_path / "in", per_class=600)
    out = tmp_path / "out"
    args = ["prepare", "folder", "--root", str(tmp_path / "in"), "--out", str(out)]
    args += ["--workers", "2", "--chunk-bytes", "2KB", "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_score.cli", *args],
        cwd=TESTS.parent,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(list((out / "train").glob("chunk-*.bin"))) < 10:
            assert proc.poll() is None and time.monotonic() < deadline, "prepare ended early"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / "train" / "index.json").exists()  # killed mid-way through train
    done = prepare(
        Source("folder", str(tmp_path / "in"), train=True, val_fraction=0.01),
        str(out),
        workers=2,
        chunk_bytes="2KB",
        progress=False,
    )
    assert done == {"train": "1188 images (resumed)", "val": "12 images"}
    items = read_items(out / "train") + read_items(out / "val")
    assert len(items) == 1200 and dict(items) == images
