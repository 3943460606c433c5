"""Power-function EMAs and their snapshots under 2-process CPU DDP (gloo), launched as users launch
it: a subprocess that Lightning's launcher starts a second time for rank 1.

Why not "2 processes equal 1 process": each rank draws its own diffusion times and noise and reads
its own shard of every batch (see ``test_ddp_train.py``), so a 2-process run trains on other
random draws than a 1-process run of the same global batch, and its weights differ by design.
What must hold instead, and is asserted here: the averages are of the replicated weights, so

* the raw weights after every step are the same bit for bit on both ranks (DDP all-reduces the
  gradients; both ranks then take the same optimizer step), and so is every power-EMA profile;
* every profile, and every snapshot, equals the power-EMA recursion applied to that recorded
  trajectory, within the float32 rounding bound derived in :func:`float32_bound`;
* only rank zero writes snapshots: one file per snapshot step, each whole (CRC-verified), no
  temporary file left, and rank one never calls the writer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from run_training import run_two_process_ddp

from lightning_score.training.checkpoint import load_checkpoint
from lightning_score.training.posthoc_ema import gamma_from_std_rel, load_snapshots, power_beta

POWER = ["ema.kind=power", "ema.std_rel=[0.05,0.10]", "ema.snapshot_every_n_steps=2"]
STEPS, EVERY = 12, 2  # run_training.TINY trains 12 steps
#: float32's unit roundoff
U32 = 2.0**-24

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp_power_ema")
    run_two_process_ddp(out, "--record-ema", *POWER)
    return out


def records(run: Path) -> tuple[dict, dict]:
    r0, r1 = (torch.load(run / f"ema_rank{r}.pt", weights_only=True) for r in (0, 1))
    return r0, r1


def recursion(weights: list[dict[str, torch.Tensor]], std_rel: float) -> list[dict]:
    """The power EMA of ``std_rel`` after each step, in float64 from the float32 trajectory:
    a_1 = w_1, a_t = beta_t a_{t-1} + (1 - beta_t) w_t with beta_t = (1 - 1/t)^(gamma + 1)."""
    gamma = gamma_from_std_rel(std_rel)
    out, avg = [], {}
    for t, state in enumerate(weights, start=1):
        beta = power_beta(t, gamma)
        avg = {
            k: w.double() if t == 1 else beta * avg[k] + (1 - beta) * w.double()
            for k, w in state.items()
            if w.is_floating_point()
        }
        out.append(avg)
    return out


def float32_bound(weights: list[dict[str, torch.Tensor]], key: str, steps: int) -> float:
    """How far the online float32 average may be from the exact one after ``steps`` updates.

    One update is ``torch._foreach_lerp_(a, w, c)``: float32 rounds the weight c, the difference
    w - a, the product and the sum, each by at most U32 of a value no larger than 2M (M the
    largest |w| so far; the averages are convex combinations, so |a| <= M as well): at most 8 U32 M
    per update. Earlier errors are multiplied by beta <= 1, so they add up to at most
    8 U32 M steps (the first update copies exactly)."""
    top = max(float(state[key].abs().max()) for state in weights[:steps])
    return 8 * U32 * top * steps


def test_both_ranks_average_the_same_replicated_weights(ddp_run: Path) -> None:
    r0, r1 = records(ddp_run)
    assert len(r0["weights"]) == len(r1["weights"]) == STEPS
    for w0, w1 in zip(r0["weights"], r1["weights"], strict=True):
        assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert len(r0["profiles"]) == len(r1["profiles"]) == 2
    for p0, p1 in zip(r0["profiles"], r1["profiles"], strict=True):
        assert p0.keys() == p1.keys()
        assert all(torch.equal(p0[k], p1[k]) for k in p0)  # bit for bit


def test_profiles_and_snapshots_are_the_recursion_over_the_recorded_weights(ddp_run: Path) -> None:
    r0, _ = records(ddp_run)
    weights = r0["weights"]
    run = ddp_run / "toy2d"
    snapshots = load_snapshots(run)  # CRC-verified, same run and widths
    assert [s.step for s in snapshots] == list(range(EVERY, STEPS + 1, EVERY))
    checked = 0
    for k, std_rel in enumerate(r0["std_rel"]):
        want = recursion(weights, std_rel)
        for key, exp in want[-1].items():
            got = r0["profiles"][k][key].double()
            assert (got - exp).abs().max() <= float32_bound(weights, key, STEPS), key
            checked += 1
        for snap in snapshots:
            for key, exp in want[snap.step - 1].items():
                got = snap.profiles[k][key].double()
                assert (got - exp).abs().max() <= float32_bound(weights, key, snap.step), key
    assert checked > 0
    last = snapshots[-1].profiles
    for got, exp in zip(last, r0["profiles"], strict=True):  # the file holds rank 0's profiles
        assert all(torch.equal(got[k], exp[k]) for k in exp)
    # the checkpoint carries the second profile for resuming: the same tensors
    stored = load_checkpoint(run / "checkpoints" / "last.ckpt")["power_ema"]["profiles"][0]
    assert all(torch.equal(stored[k], r0["profiles"][1][k]) for k in stored)


def test_only_rank_zero_writes_the_snapshots_once_and_whole(ddp_run: Path) -> None:
    r0, r1 = records(ddp_run)
    steps = list(range(EVERY, STEPS + 1, EVERY))
    assert r0["written"] == steps and r1["written"] == []
    folder = ddp_run / "toy2d" / "ema_snapshots"
    names = sorted(p.name for p in folder.iterdir())  # hidden temporary files included
    assert names == [f"step{s:07d}.pt" for s in steps]
