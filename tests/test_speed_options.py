"""Speed options. ``trainer.compile``: the compiled score model trains, validates on the EMA
weights, saves plain parameter names and resumes bit for bit (on the CPU, through inductor's C++
backend). ``trainer.channels_last``: convolution weights in NHWC, training runs."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
from run_training import tiny_config
from tiny_checkpoint import tiny_quickstart_checkpoint

from lightning_score.training.checkpoint import load_checkpoint
from lightning_score.training.run import train


def test_compiled_run_resumes_bit_for_bit_with_plain_names(tmp_path, monkeypatch):
    compiled: list[tuple[str, str | None]] = []
    real = torch.nn.Module.compile

    def recording(self, *args, **kwargs):
        compiled.append((type(self).__name__, kwargs.get("mode")))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", recording)
    options = ("trainer.compile=default", "checkpoint.every_n_steps=4", "trainer.max_steps=8")
    whole = train(tiny_config(tmp_path / "whole", *options))
    train(tiny_config(tmp_path / "split", *options, "trainer.max_steps=4"))
    split = train(tiny_config(tmp_path / "split", *options))  # resume=auto from step 4
    assert compiled == [("ToyMLP", None)] * 3  # the network, in place

    a = load_checkpoint(whole / "checkpoints" / "last.ckpt")
    b = load_checkpoint(split / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 8
    for key in ("state_dict", "current_model_state"):
        assert not any("_orig_mod" in name for name in a[key])
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][n], b[key][n]) for n in a[key]), key
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        assert all(
            torch.equal(sa["state"][i][k], sb["state"][i][k])
            for i in sa["state"]
            for k in sa["state"][i]
        )
    with open(whole / "logs" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len([r for r in rows if r.get("perf/first_step_seconds")]) == 1  # reported once
    assert len([r for r in rows if r["val/loss"]]) == 2  # validated (EMA weights) at steps 4, 8


class ConvLayouts(L.Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        convs = [m.weight for m in pl_module.modules() if isinstance(m, torch.nn.Conv2d)]
        self.channels_last = [w.is_contiguous(memory_format=torch.channels_last) for w in convs]


def test_channels_last_puts_conv_weights_in_nhwc_and_trains(tmp_path):
    layouts = ConvLayouts()
    last = tiny_quickstart_checkpoint(tmp_path, "trainer.channels_last=true", callbacks=[layouts])
    assert layouts.channels_last and all(layouts.channels_last)
    assert load_checkpoint(last)["global_step"] == 2


class GradNorms(L.Callback):
    """The total norm of the gradients each optimizer step used (after clipping)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        self.norms: list[float] = []

        def record(optimizer, args, kwargs) -> None:
            grads = [
                p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None
            ]
            self.norms.append(float(torch.nn.utils.get_total_norm(grads)))

        trainer.optimizers[0].register_step_post_hook(record)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fused_adam_steps_with_the_clipped_gradient(tmp_path, precision):
    # Lightning's mixed-precision plugin refuses to clip for a fused optimizer; ScoreModule clips.
    runs = {}
    for clip in ("0", "0.01"):
        runs[clip] = GradNorms()
        options = (f"trainer.precision={precision}", f"trainer.gradient_clip_val={clip}")
        train(tiny_config(tmp_path / clip, *options, "trainer.max_steps=4"), [runs[clip]])
    assert min(runs["0"].norms) > 0.1
    assert len(runs["0.01"].norms) == 4 and max(runs["0.01"].norms) <= 0.01 * (1 + 1e-3)
