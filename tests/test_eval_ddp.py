"""EvaluationCallback under real DDP (2 CPU processes, ``strategy="ddp"``, as a subprocess).

``ddp_spawn`` would pickle the module and double-count torchmetrics states; a subprocess script
runs the launcher exactly as users do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_eval_script import METRICS, NUM_SAMPLES, TinyExtractor, quickstart_config

from lightning_score.evaluation import ImageMetrics, ReferenceStats, compute_reference_stats

SCRIPT = Path(__file__).with_name("ddp_eval_script.py")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, Path]:
    from lightning_score.data import build_datamodule

    out = tmp_path_factory.mktemp("ddp_eval")
    dm = build_datamodule(quickstart_config(out).data)
    dm.setup()
    images = torch.stack([dm.train_set[i][0] for i in range(64)])
    stats = out / "ref.npz"
    compute_reference_stats([images], TinyExtractor()).save(stats)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), str(stats)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(SCRIPT.parents[1]),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, stats


def test_ranks_draw_different_samples(ddp_run: tuple[Path, Path]) -> None:
    out, _ = ddp_run
    r0 = np.load(out / "eval_step0000002_rank0.npz")["arr_0"]
    r1 = np.load(out / "eval_step0000002_rank1.npz")["arr_0"]
    assert (len(r0), len(r1)) == (6, 5)
    flat0, flat1 = r0.reshape(len(r0), -1), r1.reshape(len(r1), -1)
    # no image of one rank appears on the other (distinct seeds per rank)
    assert not any((flat0[i] == flat1[j]).all() for i in range(len(r0)) for j in range(len(r1)))


def test_synced_metrics_equal_single_process_on_the_union(ddp_run: tuple[Path, Path]) -> None:
    out, stats = ddp_run
    logged = json.loads((out / "eval_step0000002.json").read_text())
    union = np.concatenate(
        [np.load(out / f"eval_step0000002_rank{r}.npz")["arr_0"] for r in (0, 1)]
    )
    single = ImageMetrics(METRICS, TinyExtractor())
    single.set_reference(ReferenceStats.load(stats, expected_dim=TinyExtractor.num_features))
    single.update(torch.from_numpy(union).permute(0, 3, 1, 2))
    want = single.compute()
    assert (
        set(logged["metrics"])
        == set(want)
        == {f"fid_{NUM_SAMPLES}", f"kid_{NUM_SAMPLES}", f"kid_{NUM_SAMPLES}_std"}
    )
    assert want[f"fid_{NUM_SAMPLES}"] > 0
    for name, value in want.items():
        assert logged["metrics"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    assert (out / "eval_step0000002.png").is_file()


def test_evaluation_samples_with_ema_weights(ddp_run: tuple[Path, Path]) -> None:
    check = json.loads((ddp_run[0] / "ema_check.json").read_text())
    assert check == {"sampled_with_ema": True, "ema_differs_from_raw": True}


def test_callback_must_precede_ema(tmp_path) -> None:
    import lightning as L
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from lightning_score.evaluation.callback import EvaluationCallback
    from lightning_score.training.module import ScoreModule

    cfg = quickstart_config(tmp_path)
    evaluation = EvaluationCallback(2, 8, tmp_path / "ref.npz", cfg.sampling, tmp_path)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, callbacks=[EMAWeightAveraging(), evaluation]
    )
    with pytest.raises(ValueError, match="must come before EMAWeightAveraging"):
        evaluation.setup(trainer, ScoreModule.from_config(cfg), "fit")
