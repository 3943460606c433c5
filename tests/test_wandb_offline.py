"""W&B logging verified without a server: train and ablate under ``WANDB_MODE=offline`` and read
back what the offline run files hold (config, metrics, images), as ``wandb sync`` would upload it.

Offline runs keep everything in ``run-<id>.wandb``: W&B's LevelDB-style record log of protobuf
``Record`` messages (``wandb.proto.wandb_internal_pb2``); :func:`read_run` decodes it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.loggers import CSVLogger

from lightning_score.cli import main
from lightning_score.experiment import load_config
from lightning_score.training.loggers import build_logger
from lightning_score.training.run import train

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 32768  # LevelDB log block size; records never straddle a block's last 6 bytes
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    """The protobuf records of an offline ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = 7, b""  # 7-byte file header: ":W&B", magic, version
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # block trailer padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


@dataclass
class OfflineRun:
    dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    def history_keys(self) -> set[str]:
        return {key.split("/_")[0] for row in self.history for key in row}

    def rows_with(self, key: str) -> list[dict[str, Any]]:
        """History rows that logged ``key`` (media values are nested: ``key/_type`` ...)."""
        return [r for r in self.history if any(k.split("/_")[0] == key for k in r)]

    def images(self) -> list[Path]:
        return sorted((self.dir / "files" / "media" / "images").rglob("*.png"))


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(wandb_dir: Path) -> OfflineRun:
    """The single offline run under ``wandb_dir`` (``.../wandb/offline-run-*``), decoded.

    ``run.finish()`` returns before W&B's service process has written everything; the W&B
    teardown waits for it (processes do it at exit), so it comes first.
    """
    import wandb

    wandb.teardown()
    runs = sorted(wandb_dir.glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline run in {wandb_dir}, found {runs}"
    run = OfflineRun(runs[0])
    for record in records(next(runs[0].glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        items: Any = ()
        if kind == "run":
            items = record.run.config.update
        elif kind == "config":
            items = record.config.update
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
        run.config.update({_key(i): json.loads(i.value_json) for i in items})
    return run


@pytest.fixture(scope="module")
def offline_training(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, OfflineRun]:
    """A 4-step quickstart run with logger.name=wandb in offline mode (validation at 2 and 4)."""
    out = tmp_path_factory.mktemp("wandb_offline")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_SILENT", "true")
        env.delenv("WANDB_DIR", raising=False)
        env.delenv("WANDB_SWEEP_ID", raising=False)
        cfg = load_config(
            ROOT / "configs" / "quickstart.yaml",
            [
                f"out_dir={out}",
                "logger.name=wandb",
                "logger.tags=[test]",
                "model.kwargs.channels=[8, 16]",
                "data.batch_size=32",
                "optim.warmup_steps=2",
                "trainer.max_steps=4",
                "trainer.val_check_interval=2",
                "trainer.limit_val_batches=1",
                "trainer.log_every_n_steps=1",
                "checkpoint.every_n_steps=4",
                "sample_grid.every_n_steps=4",
                "sample_grid.num=4",
                "sampling.steps=4",
            ],
        )
        run_dir = train(cfg)
    return run_dir, read_run(run_dir / "logs" / "wandb")


def test_offline_run_holds_config_metrics_and_images(offline_training):
    run_dir, run = offline_training
    assert run.exit_code == 0  # the logger finished the run when training ended
    # the resolved config, flattened to the keys sweeps set
    assert run.config["sde.name"] == "vpsde"
    assert run.config["trainer.max_steps"] == 4
    assert run.config["model.kwargs.channels"] == [8, 16]
    assert run.config["logger.name"] == "wandb"
    assert not any(k.startswith("config") for k in run.config)  # not nested under "config"

    keys = run.history_keys()
    scalars = {"train/loss", "val/loss", "lr-Adam", "train/samples_per_s"}
    assert scalars <= keys, keys
    assert any(k.startswith("val_loss_t/") for k in keys), keys
    assert {"samples", "val/loss_per_t_plot", "val/loss_per_t"} <= keys  # grid, plot, table
    assert "train/loss_plot" in keys and (run_dir / "loss.png").stat().st_size > 0  # loss.png
    steps = [r["trainer/global_step"] for r in run.rows_with("val/loss_per_t_plot")]
    assert steps == [2, 4]  # one per validation
    rates = [r["train/samples_per_s"] for r in run.rows_with("train/samples_per_s")]
    assert len(rates) == 4 and all(r > 0 for r in rates)
    assert run.summary["val/loss"] > 0

    images = {p.name.split("_")[0] for p in run.images()}
    assert {"samples", "loss"} <= images, run.images()  # samples_*.png, loss_per_t_plot_*.png
    assert (run_dir / "per_t_loss.png").stat().st_size > 0


def test_ablate_on_a_wandb_checkpoint_logs_its_plot_and_table(offline_training, monkeypatch):
    run_dir, _ = offline_training
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    out = run_dir / "ablation"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    argv = ["ablate", str(ckpt), "--samplers", "euler:2,pc:3", "--num", "4", "--metric", "none"]
    assert main([*argv, "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    run = read_run(out / "wandb")
    assert run.exit_code == 0
    assert {"ablation/quality_vs_nfe", "ablation/results"} <= run.history_keys()
    assert [p.name.split("_")[0] for p in run.images()] == ["quality"]
    assert run.config["samplers"] == "euler:2,pc:3"
    assert run.config["train.sde.name"] == "vpsde"  # the checkpoint's config rides along


def test_csv_stays_the_default_and_wandb_files_follow_wandb_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_DIR", raising=False)
    cfg = load_config(None, [f"out_dir={tmp_path}"])
    assert isinstance(build_logger(cfg), CSVLogger)
    cfg = load_config(None, [f"out_dir={tmp_path}", "logger.name=wandb"])
    assert Path(build_logger(cfg).save_dir) == cfg.run_dir / "logs"
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    assert Path(build_logger(cfg).save_dir) == tmp_path / "elsewhere"


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    """Rerunning a stopped run logs to the W&B run it started (same id; `wandb sync` merges the
    offline parts), not to a new run per restart."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    overrides = [
        f"out_dir={tmp_path}",
        "logger.name=wandb",
        "model.kwargs.channels=[8, 16]",
        "data.batch_size=16",
        "trainer.val_check_interval=100",
        "trainer.log_every_n_steps=1",
        "checkpoint.every_n_steps=2",
        "sample_grid.every_n_steps=100",
        "sample_grid.num=4",
        "sampling.steps=2",
    ]
    quickstart = ROOT / "configs" / "quickstart.yaml"
    run_dir = train(load_config(quickstart, [*overrides, "trainer.max_steps=2"]))
    train(load_config(quickstart, [*overrides, "trainer.max_steps=4"]))
    import wandb

    wandb.teardown()
    parts = sorted((run_dir / "logs" / "wandb").glob("offline-run-*"))
    assert len(parts) == 2
    # offline-run-<date>_<time>-<id>, and "-1" appended by W&B when both parts start in the
    # same second
    ids = {p.name.split("-")[3] for p in parts}
    assert len(ids) == 1, ids
    assert (run_dir / "logs" / "wandb-run-id").read_text().strip() in ids
    # a new run in the same place (after removing the old one's checkpoints) gets a new id
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        ckpt.unlink()
    train(load_config(quickstart, [*overrides, "trainer.max_steps=2", "resume=none"]))
    wandb.teardown()
    assert (run_dir / "logs" / "wandb-run-id").read_text().strip() not in ids
