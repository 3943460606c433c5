"""The training step does not wait for the device: the fused EMA equals the EMA recursion, and a
real training run reads nothing back from the device outside logging steps (checked on the CPU
with HostSyncWatch, which records the calls that would synchronise with a GPU)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from run_training import tiny_config

from lightning_score.config import ConfigError
from lightning_score.training.ema import EMA
from lightning_score.training.run import train
from lightning_score.training.syncwatch import HostSyncWatch


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)
        )
        self.register_buffer("scale", torch.tensor([0.5, -0.25]))
        self.register_buffer("count", torch.tensor(3))  # not floating: copied, not averaged


def fitted_ema(decay: float) -> tuple[EMA, Tiny]:
    module = Tiny()
    ema = EMA(decay)
    ema.setup(None, module, "fit")  # type: ignore[arg-type]
    ema.on_fit_start(None, module)  # type: ignore[arg-type]
    return ema, module


def move(module: Tiny, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        module.scale.mul_(1.1)
        module.count.add_(1)


def averaged(ema: EMA) -> list[torch.Tensor]:
    average = ema._average_model.module  # type: ignore[union-attr]
    return [t.detach().clone() for t in (*average.parameters(), *average.buffers())]


def test_fused_ema_equals_the_ema_recursion():
    """Each update equals d * ema + (1 - d) * w to 1e-7 (weights of size < 1, so that is about
    one float32 rounding); over six updates the average stays within 1e-6 of the recursion
    computed in float64."""
    decay, gen = 0.9, torch.Generator().manual_seed(0)
    ema, module = fitted_ema(decay)
    exact: list[torch.Tensor] | None = None
    previous: list[torch.Tensor] | None = None
    for _ in range(6):
        move(module, gen)
        ema.update()
        got = averaged(ema)
        current = [t.detach().clone() for t in (*module.parameters(), *module.buffers())]
        if previous is None:  # the first update copies the weights
            assert all(torch.equal(g, c) for g, c in zip(got, current, strict=True))
            exact = [c.double() for c in current]
        else:
            assert exact is not None
            for g, p, c in zip(got, previous, current, strict=True):
                if not c.is_floating_point():  # the int buffer is copied
                    assert torch.equal(g, c)
                    continue
                want = decay * p.double() + (1 - decay) * c.double()
                assert c.abs().max() < 1 and (g.double() - want).abs().max().item() < 1e-7
            exact = [
                decay * e + (1 - decay) * c.double() for e, c in zip(exact, current, strict=True)
            ]
            floats = [(g, e) for g, e in zip(got, exact, strict=True) if g.is_floating_point()]
            assert max((g.double() - e).abs().max().item() for g, e in floats) < 1e-6
        previous = got
    assert int(ema._average_model.n_averaged) == 6  # type: ignore[union-attr]
    assert averaged(ema)[-1].item() == module.count.item() == 9


def test_a_skipped_step_leaves_the_average_as_it_was_and_a_kept_one_updates_it():
    decay, gen = 0.9, torch.Generator().manual_seed(1)
    ema, module = fitted_ema(decay)
    move(module, gen)
    ema.update(torch.tensor(0.0))  # first update: copy
    before = averaged(ema)
    move(module, gen)
    ema.update(torch.tensor(1.0))
    assert all(torch.equal(a, b) for a, b in zip(averaged(ema)[:-1], before[:-1], strict=True))
    ema.update(torch.tensor(0.0))
    current = [t.detach() for t in module.parameters()]
    for got, old, new in zip(averaged(ema), before, current, strict=False):
        want = decay * old.double() + (1 - decay) * new.double()
        assert (got.double() - want).abs().max().item() < 1e-7


def test_checkpoint_holds_the_average_as_state_dict_and_the_raw_weights_beside_it():
    ema, module = fitted_ema(0.5)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        move(module, gen)
        ema.update()
    checkpoint = {"state_dict": module.state_dict()}
    ema.on_save_checkpoint(None, module, checkpoint)  # type: ignore[arg-type]
    raw, average = checkpoint["current_model_state"], checkpoint["state_dict"]
    assert raw.keys() == average.keys() == module.state_dict().keys()
    assert torch.equal(raw["net.0.weight"], module.net[0].weight)
    assert torch.equal(average["net.0.weight"], ema._average_model.module.net[0].weight)  # type: ignore[union-attr]
    assert not torch.equal(raw["net.0.weight"], average["net.0.weight"])
    assert int(checkpoint["averaging_state"]["n_averaged"]) == 3


def test_host_sync_watch_sees_reads_and_python_data_sent_to_a_device():
    x = torch.arange(4.0)
    with HostSyncWatch() as watch:
        y = (x * 2).sum() + x.mean()  # stays on the device
        _ = torch.tensor([1.0, 2.0])  # host tensor: no copy to a device
        assert watch.events == []
        y.item()
        bool(y > 0)
        x[x > 1]
        torch.tensor(3.0, device="cpu")
    assert [e.call for e in watch.events] == ["item", "__bool__", "__getitem__", "tensor"]
    assert all(e.caller.endswith(f"{__file__}:{e.caller.rsplit(':')[-1]}") for e in watch.events)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_training_reads_nothing_from_the_device_between_logging_steps(tmp_path, policy):
    cfg = tiny_config(
        tmp_path,
        f"trainer.nonfinite={policy}",
        "trainer.log_every_n_steps=5",
        "trainer.val_check_interval=100",
        "checkpoint.every_n_steps=100",
    )
    with HostSyncWatch() as watch:
        train(cfg, [watch.marker()])
    per_step = watch.per_step()
    # Lightning's LearningRateMonitor reads at the start of a logging step (counted in the step
    # before), the logging step reads the metrics, the last step saves the final checkpoint.
    quiet = [s for s in range(1, 12) if s % 5 not in (0, 4)]
    assert {s: per_step[s] for s in quiet} == dict.fromkeys(quiet, 0), [
        e for e in watch.events if e.step in quiet
    ]
    assert per_step[5] > 0 and per_step[10] > 0  # the watch does see the logging steps


def test_unknown_compile_mode_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.compile='fast' is not valid.*reduce-overhead"):
        tiny_config(tmp_path, "trainer.compile=fast")
