"""Power-function EMA and its post-hoc reconstruction (EDM2): closed forms, the fused online
update, reconstruction against a directly tracked width, resume, and the command end to end."""

from __future__ import annotations

import json
import shutil
import signal

import numpy as np
import pytest
import torch
from run_training import tiny_config
from test_evaluate_cli import TinyExtractor
from test_resume import start_run, wait_for
from test_sync_free_step import Tiny, averaged, move
from tiny_checkpoint import tiny_quickstart_checkpoint

from lightning_score.cli import main
from lightning_score.config import ConfigError
from lightning_score.experiment import load_config
from lightning_score.training.checkpoint import load_checkpoint, load_score_model
from lightning_score.training.ema import PowerEMA
from lightning_score.training.posthoc_ema import (
    gamma_from_std_rel,
    parse_widths,
    power_beta,
    solve,
    std_rel_from_gamma,
    step_weights,
)
from lightning_score.training.run import train

POWER = ["ema.kind=power", "ema.std_rel=[0.05,0.10]", "ema.snapshot_every_n_steps=2"]


def test_std_rel_and_gamma_are_inverse_and_match_edm2s_pair() -> None:
    for s in (0.01, 0.05, 0.08, 0.10, 0.2):
        assert std_rel_from_gamma(gamma_from_std_rel(s)) == pytest.approx(s, rel=1e-10)
    # EDM2's two tracked profiles: std_rel 0.050 and 0.100 are gamma 16.97 and 6.94
    assert gamma_from_std_rel(0.05) == pytest.approx(16.97, abs=0.01)
    assert gamma_from_std_rel(0.10) == pytest.approx(6.94, abs=0.01)


def test_the_online_update_equals_the_profile_integrated_per_step() -> None:
    """beta_t = (1 - 1/t)^(g+1) after step t gives theta_t the weight (t^(g+1) - (t-1)^(g+1)) /
    T^(g+1); for theta_t = t that sum lies within [0, 1] of the continuous average (g+1) T / (g+2)."""
    for gamma, steps in ((6.94, 500), (16.97, 2000), (0.0, 50)):
        avg = 0.0
        for t in range(1, steps + 1):
            beta = power_beta(t, gamma)
            avg = beta * avg + (1 - beta) * t
        exact = float(step_weights(gamma, steps) @ np.arange(1, steps + 1))
        assert avg == pytest.approx(exact, rel=1e-12)
        continuous = (gamma + 1) * steps / (gamma + 2)
        assert 0.0 <= exact - continuous <= 1.0


def test_the_fused_power_ema_follows_the_recursion_for_every_profile() -> None:
    """PowerEMA's foreach updates equal beta * avg + (1 - beta) * w with each profile's beta, and
    the second profile lands in the checkpoint with the first one's keys."""
    module = Tiny()
    ema = PowerEMA([0.05, 0.10])
    ema.setup(None, module, "fit")  # type: ignore[arg-type]
    ema.on_fit_start(None, module)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    gammas = [gamma_from_std_rel(0.05), gamma_from_std_rel(0.10)]
    want = [None, None]
    for t in range(1, 9):
        move(module, gen)
        ema.update()
        current = [p.detach().clone() for p in (*module.parameters(), *module.buffers())]
        for k, gamma in enumerate(gammas):
            b = power_beta(t, gamma)
            want[k] = [
                c.clone() if (w is None or not c.is_floating_point()) else b * w + (1 - b) * c
                for c, w in zip(current, want[k] or [None] * len(current), strict=True)
            ]
    for got, exp in zip(averaged(ema), want[0], strict=True):
        torch.testing.assert_close(got, exp, rtol=0, atol=1e-6)
    second = ema.profile_states(module)[1]
    names = [n for n, _ in (*module.named_parameters(), *module.named_buffers())]
    for name, exp in zip(names, want[1], strict=True):
        torch.testing.assert_close(second[name], exp, rtol=0, atol=1e-6)


def test_a_dropped_step_still_counts_in_every_profile() -> None:
    """A step the non-finite guard dropped left the raw weights as they were; the profiles take
    it like any other, so they stay the power profiles over all counted steps."""
    module = Tiny()
    ema = PowerEMA([0.05, 0.10])
    ema.setup(None, module, "fit")  # type: ignore[arg-type]
    ema.on_fit_start(None, module)  # type: ignore[arg-type]
    twin = PowerEMA([0.05, 0.10])
    twin.setup(None, module, "fit")  # type: ignore[arg-type]
    twin.on_fit_start(None, module)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(1)
    for t in range(1, 7):
        if t != 4:  # step 4 dropped: the weights do not move
            move(module, gen)
        ema.update(torch.tensor(1.0 if t == 4 else 0.0))
        twin.update()
    for a, b in zip(ema.profile_states(module), twin.profile_states(module), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_reconstructing_008_from_snapshots_of_005_and_010_matches_tracking_it() -> None:
    """A scalar trajectory theta_t, snapshots of std_rel 0.05 and 0.10 every 25 of 500 steps, and
    a directly tracked 0.08: the reconstruction's error is at most || sum x_i w^(i) - w^(r) ||_1
    max|theta| (the discrete weights' mismatch; the bound is computed, not chosen)."""
    steps, every = 500, 25
    rng = np.random.default_rng(0)
    theta = np.cumsum(rng.standard_normal(steps))  # a random walk, like weights under SGD
    tracked = {s: [] for s in (0.05, 0.10, 0.08)}
    basis, weights = [], []
    for s in tracked:
        g, avg = gamma_from_std_rel(s), 0.0
        for t in range(1, steps + 1):
            b = power_beta(t, g)
            avg = b * avg + (1 - b) * theta[t - 1]
            if t % every == 0:
                tracked[s].append(avg)
    for s in (0.05, 0.10):
        g = gamma_from_std_rel(s)
        for t in range(every, steps + 1, every):
            basis.append((g, t))
            weights.append(np.pad(step_weights(g, t), (0, steps - t)))
    snapshots = np.array(tracked[0.05] + tracked[0.10])
    order = [k for s in (0.05, 0.10) for k in range(len(tracked[s]))]
    assert len(order) == len(basis)
    found = solve(basis, (gamma_from_std_rel(0.08), steps))
    got = float(found.coefficients @ snapshots)
    target = step_weights(gamma_from_std_rel(0.08), steps)
    bound = np.abs(found.coefficients @ np.array(weights) - target).sum() * np.abs(theta).max()
    assert found.residual < 1e-4
    assert abs(got - tracked[0.08][-1]) <= bound
    assert bound < 0.05 * np.abs(theta).max()  # the bound itself is tight: a few % at most


def test_power_ema_config_is_checked_at_load() -> None:
    with pytest.raises(ConfigError, match=r"ema\.kind must be exponential or power"):
        load_config(None, ["ema.kind=karras"])
    with pytest.raises(ConfigError, match=r"ema\.std_rel must be widths"):
        load_config(None, ["ema.std_rel=[0.05,0.5]"])
    with pytest.raises(ValueError, match="lo:hi:count"):
        parse_widths("0.02:0.2")
    assert parse_widths("0.02:0.20:10")[-1] == pytest.approx(0.2)


def snapshot_files(run_dir):
    return sorted((run_dir / "ema_snapshots").glob("*.pt"))


def test_a_killed_and_resumed_run_writes_the_same_snapshots(tmp_path) -> None:
    """SIGKILL after step 6 of 12, rerun: every snapshot, and the checkpoint's second profile,
    equal the uninterrupted run's bit for bit."""
    killed = tmp_path / "killed"
    proc = start_run(killed, "--hang-at", "6", *POWER)
    reference = train(tiny_config(tmp_path / "whole", *POWER))
    wait_for(proc, killed / "hanging")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    train(tiny_config(killed, *POWER))
    a, b = snapshot_files(killed / "toy2d"), snapshot_files(reference)
    assert (
        [p.name for p in a] == [p.name for p in b] == [f"step{s:07d}.pt" for s in range(2, 13, 2)]
    )
    for x, y in zip(a, b, strict=True):
        sx, sy = torch.load(x, weights_only=True), torch.load(y, weights_only=True)
        for px, py in zip(sx["profiles"], sy["profiles"], strict=True):
            assert px.keys() == py.keys()
            assert all(torch.equal(px[k], py[k]) for k in px)
    ca = load_checkpoint(killed / "toy2d" / "checkpoints" / "last.ckpt")["power_ema"]
    cb = load_checkpoint(reference / "checkpoints" / "last.ckpt")["power_ema"]
    assert all(torch.equal(ca["profiles"][0][k], cb["profiles"][0][k]) for k in cb["profiles"][0])


def test_posthoc_ema_command_writes_a_checkpoint_every_command_takes(tmp_path, capsys) -> None:
    run = train(tiny_config(tmp_path, *POWER))
    out = tmp_path / "ema08.ckpt"
    assert main(["posthoc-ema", str(run), "--std-rel", "0.08", "--out", str(out)]) == 0
    ckpt = load_checkpoint(out)
    meta = ckpt["posthoc_ema"]
    assert meta["std_rel"] == 0.08 and meta["step"] == 12 and len(meta["snapshots"]) == 6
    assert meta["residual"] < 1e-2
    # the combination of the snapshots' weights, as the coefficients say
    snaps = [torch.load(p, weights_only=True) for p in snapshot_files(run)]
    key = next(
        k for k, v in ckpt["state_dict"].items() if k.startswith("score_model.") and v.dim() == 2
    )
    combo = sum(
        x * p[key].double()
        for x, p in zip(
            meta["coefficients"], [p for s in snaps for p in s["profiles"]], strict=True
        )
    )
    torch.testing.assert_close(ckpt["state_dict"][key].double(), combo, rtol=0, atol=1e-6)
    model, _ = load_score_model(out)  # what sample / evaluate / export load
    assert next(model.parameters()).dtype == torch.float32
    assert main(["sample", str(out), "--num", "8", "--out", str(tmp_path / "s")]) == 0
    assert (
        main(["export", str(out), "--format", "safetensors", "--out", str(tmp_path / "export")])
        == 0
    )
    assert load_score_model(tmp_path / "export")[0] is not None
    # a family into a folder, and refusals in one line
    assert (
        main(["posthoc-ema", str(run), "--std-rel", "0.06:0.09:3", "--out", str(tmp_path / "fam")])
        == 0
    )
    assert len(list((tmp_path / "fam").glob("std_rel_*.ckpt"))) == 3
    capsys.readouterr()
    assert (
        main(["posthoc-ema", str(run), "--std-rel", "0.005", "--out", str(tmp_path / "x.ckpt")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "cannot be represented" in err and "they represent std_rel" in err and "\n" not in err
    family = tmp_path / "refused"
    argv = ["posthoc-ema", str(run), "--std-rel", "0.06:0.28:3", "--out", str(family)]
    assert main(argv) == 2
    assert "cannot be represented" in capsys.readouterr().err
    assert not list(family.glob("*.ckpt"))  # refused whole: no part of the family written


def test_refusals_name_the_cause(tmp_path, capsys) -> None:
    plain = train(tiny_config(tmp_path / "plain"))
    assert (
        main(["posthoc-ema", str(plain), "--std-rel", "0.08", "--out", str(tmp_path / "a.ckpt")])
        == 2
    )
    assert "ema.kind=power" in capsys.readouterr().err
    run = train(tiny_config(tmp_path / "power", *POWER))
    other = train(tiny_config(tmp_path / "other", *POWER, "optim.lr=1e-3"))
    shutil.copy(snapshot_files(other)[0], run / "ema_snapshots" / "step0000001.pt")
    assert (
        main(["posthoc-ema", str(run), "--std-rel", "0.08", "--out", str(tmp_path / "b.ckpt")]) == 2
    )
    assert "different runs or configs" in capsys.readouterr().err
    one = train(tiny_config(tmp_path / "one", "ema.kind=power", "ema.std_rel=[0.05]",
                            "ema.snapshot_every_n_steps=12"))  # fmt: skip
    assert (
        main(["posthoc-ema", str(one), "--std-rel", "0.08", "--out", str(tmp_path / "c.ckpt")]) == 2
    )
    assert "needs at least two" in capsys.readouterr().err


def test_evaluate_reconstructs_a_width_in_memory_as_the_command_writes_it(
    tmp_path, monkeypatch, capsys
) -> None:
    """``lscore evaluate last.ckpt ema.std_rel=W`` (what the sweep file runs) scores the same
    weights as evaluating the checkpoint ``lscore posthoc-ema --std-rel W`` writes, records the
    width, and two widths write two results."""
    from lightning_score import evaluation

    monkeypatch.setattr(evaluation, "load_inception", lambda *a, **k: TinyExtractor())
    monkeypatch.setenv("LSCORE_CACHE_DIR", str(tmp_path / "cache"))
    ckpt = tiny_quickstart_checkpoint(tmp_path, *POWER, "trainer.max_steps=4")
    written = tmp_path / "ema08.ckpt"
    assert (
        main(["posthoc-ema", str(ckpt.parents[1]), "--std-rel", "0.08", "--out", str(written)]) == 0
    )
    common = ["--num", "8", "--sample-batch-size", "8", "--no-progress", "--out"]
    records = []
    for source, extra in [
        (written, []),
        (ckpt, ["ema.std_rel=0.08"]),
        (ckpt, ["ema.std_rel=0.06"]),
    ]:
        out = tmp_path / f"eval{len(records)}"
        assert main(["evaluate", str(source), *common, str(out), *extra]) == 0
        (path,) = out.glob("*.json")
        records.append(json.loads(path.read_text()))
    from_file, in_memory, other = records
    assert in_memory["posthoc_ema"]["std_rel"] == 0.08 and in_memory["step"] == 4
    assert in_memory["weights_sha256"] == from_file["weights_sha256"]
    assert in_memory["metrics"] == from_file["metrics"]
    assert other["weights_sha256"] != in_memory["weights_sha256"]
    assert main(["evaluate", str(ckpt), *common, str(tmp_path / "eval2"), "ema.std_rel=0.06"]) == 2
    assert "exists" in capsys.readouterr().err  # the 0.06 result above is kept
    for bad, why in [
        (["--no-ema", "ema.std_rel=0.08"], "drop --no-ema"),
        (["ema.std_rel=0.08", "ema.std_rel=0.09"], "one width"),
        (["ema.decay=0.9"], "only sampling.* overrides"),
    ]:
        assert main(["evaluate", str(ckpt), *common, str(tmp_path / "bad"), *bad]) == 2
        assert why in capsys.readouterr().err
    plain = tiny_quickstart_checkpoint(tmp_path / "plain")
    assert main(["evaluate", str(plain), *common, str(tmp_path / "p"), "ema.std_rel=0.08"]) == 2
    assert "ema.kind=power" in capsys.readouterr().err


def test_a_family_is_scored_beside_the_training_ema_and_a_baseline(tmp_path) -> None:
    """``--metric`` scores every width on the same seeds; the width the run tracked as its
    checkpoint EMA (0.05) reconstructs that EMA, so the two score alike."""
    import csv

    run = train(tiny_config(tmp_path / "power", *POWER))
    plain = train(tiny_config(tmp_path / "plain")) / "checkpoints" / "last.ckpt"
    out = tmp_path / "family"
    argv = ["posthoc-ema", str(run), "--std-rel", "0.05:0.09:3", "--out", str(out),
            "--metric", "swd", "--num", "64", "--bootstrap", "20", "--baseline", str(plain),
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    with open(out / "posthoc_ema.csv") as fh:
        rows = list(csv.DictReader(fh))
    arms = [r["arm"] for r in rows]
    assert arms[:3] == ["std_rel 0.050", "std_rel 0.070", "std_rel 0.090"]
    assert arms[3] == "training EMA (std_rel 0.05)" and arms[4].startswith("baseline ")
    swd = [float(r["sliced_wasserstein_to_data"]) for r in rows]
    se = [float(r["sliced_wasserstein_to_data_stderr"]) for r in rows]
    assert all(v > 0 for v in swd) and all(e > 0 for e in se)
    assert swd[0] == pytest.approx(swd[3], rel=1e-3)  # the same average, up to the lstsq
    assert sum(r["within_noise_of_best"] == "True" for r in rows) >= 1
    assert "Best width" in (out / "posthoc_ema.md").read_text()
    assert (out / "posthoc_ema.png").stat().st_size > 0
    assert main(argv) == 2  # everything it wrote is kept


def test_the_width_figure_keeps_its_scale_on_the_widths() -> None:
    """A baseline six times worse than every width is named at the top edge, not drawn; the
    training EMA, within the widths' range, is drawn as a line."""
    from lightning_score.commands.posthoc_ema import width_figure

    rows = [{"arm": f"std_rel {w}", "std_rel": w, "fid": f, "fid_stderr": 1.0}
            for w, f in [(0.05, 55.0), (0.10, 56.0), (0.15, 60.0)]]  # fmt: skip
    rows += [
        {"arm": "training EMA (std_rel 0.05)", "std_rel": None, "fid": 55.5, "fid_stderr": 1.0},
        {
            "arm": "baseline run/checkpoints/last.ckpt",
            "std_rel": None,
            "fid": 181.7,
            "fid_stderr": 1.0,
        },
    ]
    ax = width_figure(rows, "fid", 1000).axes[0]
    assert ax.get_ylim()[1] < 100
    assert [t.get_text() for t in ax.texts] == [
        "baseline run/checkpoints/last.ckpt: 181.7 ± 1 (off the scale)"
    ]
    assert "training EMA (std_rel 0.05)" in [t.get_text() for t in ax.get_legend().get_texts()]
