"""Official score_sde_pytorch checkpoints: key layout, EMA order, outputs, conversion, bad files.

``fixtures/official_ncsnpp_reference.json`` was produced by running the official
``models/ncsnpp.py`` (yang-song/score_sde_pytorch at cb1f359, CPU, the CUDA ``upfirdn2d`` replaced
by its own pure-PyTorch fallback) on tiny configs: it holds the official state-dict keys and
shapes in order, the trainable-parameter order (the EMA ``shadow_params`` order) and the official
output for deterministic weights and inputs described in the file.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from lightning_score.commands import convert
from lightning_score.experiment import build_score_model
from lightning_score.interop.official import (
    OFFICIAL_CONFIGS,
    OfficialCheckpointError,
    load_official_checkpoint,
    official_experiment,
)
from lightning_score.nets import build_network
from lightning_score.nets.official_layout import from_official_state_dict, to_official_state_dict
from lightning_score.parameterization import build_parameterization
from lightning_score.sde import VESDE, VPSDE, SubVPSDE

REFERENCE = json.loads(
    (Path(__file__).parent / "fixtures/official_ncsnpp_reference.json").read_text()
)
CASES = {case["preset"]: case for case in REFERENCE["cases"]}
SDES = {"vesde": VESDE, "vpsde": VPSDE}


def _synthetic(index: int, shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    n = math.prod(shape)
    values = 0.2 * torch.sin(torch.arange(n, dtype=torch.float64) * 0.618 + 0.37 * index)
    return values.reshape(shape).to(dtype)


def _param(sde):
    return build_parameterization("auto", sde)


def _official_net(case: dict):
    param = _param(SDES[case["sde"]]())
    return build_network(case["preset"], case["data_shape"], param, **case["overrides"])


@pytest.mark.parametrize("preset", sorted(CASES))
def test_matches_the_official_model(preset: str) -> None:
    """Same keys, shapes, EMA order and outputs as the official NCSNpp."""
    case = CASES[preset]
    dtype = getattr(torch, case["dtype"])
    net = _official_net(case).to(dtype).eval()
    ours = to_official_state_dict(net)
    official_layout = [(k, s) for k, s in case["state_dict"] if k != "module.sigmas"]
    assert [(k, list(v.shape)) for k, v in ours.items()] == official_layout
    frozen = {"module.all_modules.0.W"} if net.embed is not None else set()
    assert [k for k in ours if k not in frozen] == case["trainable_parameters"]

    official = {k: _synthetic(i, s, dtype) for i, (k, s) in enumerate(case["state_dict"])}
    net.load_state_dict(from_official_state_dict(net, official))
    n = 2 * 3 * 16 * 16
    x = (0.5 + 0.4 * torch.sin(torch.arange(n, dtype=torch.float64) * 0.37)).reshape(2, 3, 16, 16)
    cond = torch.tensor(case["cond"], dtype=dtype)
    with torch.no_grad():
        if case["sde"] == "vesde":  # official VE: Fourier features of log sigma, output / sigma
            out = net(x.to(dtype), cond.log()) / cond[:, None, None, None]
        else:  # official VP: the DDPM timestep, epsilon out
            out = net(x.to(dtype), cond)
    expected = torch.tensor(case["output_every_2nd_pixel"], dtype=torch.float64)
    got = out[:, :, ::2, ::2].flatten().double()
    tol = 1e-8 if dtype == torch.float64 else 1e-5
    assert (got - expected).abs().max() <= tol * expected.abs().max()


def _perturbed(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Nonzero weights everywhere (zero-initialised layers would hide mapping mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return net


def _write_official(
    path: Path, raw: torch.nn.Module, ema: torch.nn.Module, order: list[str]
) -> None:
    """A file laid out like score_sde_pytorch's ``save_checkpoint`` output."""
    model = {"module.sigmas": torch.linspace(50, 0.01, 1000), **to_official_state_dict(raw)}
    ema_official = to_official_state_dict(ema)
    state = {
        "optimizer": {
            "state": {},
            "param_groups": [{"lr": 2e-4, "params": list(range(len(order)))}],
        },
        "model": model,
        "ema": {
            "decay": 0.999,
            "num_updates": 7,
            "shadow_params": [ema_official[k] for k in order],
        },
        "step": 1234,
    }
    torch.save(state, path)


@pytest.fixture
def ve_checkpoint(tmp_path: Path):
    torch.manual_seed(0)
    sde = VESDE()
    raw = _perturbed(build_network("ncsnpp_tiny", (3, 16, 16), _param(sde)), 1).eval()
    ema = _perturbed(build_network("ncsnpp_tiny", (3, 16, 16), _param(sde)), 2).eval()
    ema.embed.W.data.copy_(raw.embed.W)  # frozen: the official EMA never holds it
    path = tmp_path / "checkpoint_26.pth"
    _write_official(path, raw, ema, CASES["ncsnpp_tiny"]["trainable_parameters"])
    return path, raw, ema, sde


def test_checkpoint_round_trip_raw_and_ema(ve_checkpoint) -> None:
    path, raw, ema, sde = ve_checkpoint
    x, t = torch.rand(3, 3, 16, 16), torch.tensor([0.01, 0.5, 1.0])
    for use_ema, ref in ((True, ema), (False, raw)):
        model, got_sde = load_official_checkpoint(
            path,
            "ncsnpp_tiny",
            data_shape=(3, 16, 16),
            sde_overrides=["sde.name=vesde"],
            use_ema=use_ema,
        )
        assert isinstance(got_sde, VESDE) and not model.training
        for name, value in ref.state_dict().items():
            assert torch.equal(model.net.state_dict()[name], value), name
        sigma = sde.sigma(t)
        with torch.no_grad():
            # Official VE score_fn: Fourier features of log sigma, the output divided by sigma.
            expected = ref(x, sigma.log()) / sigma[:, None, None, None]
            torch.testing.assert_close(model(x, t), expected, rtol=0, atol=0)
    # The same file through an official config name, shrunk to the tiny widths by overrides.
    tiny = {"nf": 16, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8]}
    model, got_sde = load_official_checkpoint(
        path, "ve/cifar10_ncsnpp_continuous", data_shape=(3, 16, 16), **tiny
    )
    assert isinstance(got_sde, VESDE) and (got_sde.sigma_min, got_sde.sigma_max) == (0.01, 50.0)
    with torch.no_grad():
        expected = ema(x, sigma.log()) / sigma[:, None, None, None]
        torch.testing.assert_close(model(x, t), expected, rtol=0, atol=0)


def test_vp_checkpoint_gives_the_official_vp_score(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sde = SubVPSDE()
    raw = _perturbed(build_network("ddpmpp_tiny", (3, 16, 16), _param(sde)), 3).eval()
    path = tmp_path / "checkpoint_1.pth"
    _write_official(path, raw, raw, CASES["ddpmpp_tiny"]["trainable_parameters"])
    model, _ = load_official_checkpoint(
        path, "ddpmpp_tiny", data_shape=(3, 16, 16), sde_overrides=["sde.name=subvpsde"]
    )
    x, t = torch.rand(2, 3, 16, 16) * 2 - 1, torch.tensor([0.01, 0.7])
    std = sde.marginal_prob(x, t)[1]
    with torch.no_grad():
        expected = -raw(x, t * 999) / std[:, None, None, None]  # official get_score_fn, continuous
        torch.testing.assert_close(model(x, t), expected)


def test_convert_cli_writes_a_lightning_score_checkpoint(
    ve_checkpoint, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from lightning_score.training.checkpoint import load_score_model

    path, raw, ema, sde = ve_checkpoint
    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    assert convert.run(parser.parse_args(["--list"])) == 0
    assert "ve/cifar10_ncsnpp_deep_continuous" in capsys.readouterr().out
    out = tmp_path / "converted.ckpt"
    args = parser.parse_args(
        [
            str(path),
            "--config",
            "ncsnpp_tiny",
            "--image-size",
            "16",
            "--sde",
            "vesde",
            "--out",
            str(out),
        ]
    )
    assert convert.run(args) == 0
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 1234
    assert ckpt["hyper_parameters"]["config"]["model"]["name"] == "ncsnpp_tiny"
    x, t = torch.rand(2, 3, 16, 16), torch.tensor([0.2, 0.8])
    for use_ema, ref in ((True, ema), (False, raw)):
        model, cfg = load_score_model(out, ema=use_ema)
        assert cfg.sde.name == "vesde" and cfg.sampling.corrector == "langevin"
        sigma = sde.sigma(t)[:, None, None, None]
        with torch.no_grad():  # the official VE score: the network divides by sigma
            torch.testing.assert_close(model(x, t), ref(x, sde.sigma(t).log()) / sigma)


def test_official_config_names_resolve_to_the_right_networks_and_sdes() -> None:
    cfg = official_experiment("configs/ve/church_ncsnpp_continuous.py")
    assert cfg.model.name == "ncsnpp_256" and cfg.data.image_size == 256
    assert cfg.sde.name == "vesde" and cfg.sde.sigma_max == 380 and cfg.sde.N == 2000
    assert cfg.data.categories == ["church_outdoor"] and cfg.loss.reduce == "half_sum"
    cfg = official_experiment("subvp/cifar10_ddpmpp_deep_continuous")
    assert cfg.model.name == "ddpmpp_cifar10_deep" and cfg.sde.name == "subvpsde"
    assert official_experiment("ve/ffhq_ncsnpp_continuous").loss.reduce == "mean"
    built = set()
    for name in OFFICIAL_CONFIGS:  # every distinct network once: VE models center their input
        cfg = official_experiment(name)
        key = (cfg.model.name, cfg.data.image_size, repr(cfg.model.kwargs), cfg.sde.name)
        if key in built:
            continue
        built.add(key)
        with torch.device("meta"):
            net = build_score_model(cfg).net
        assert net.center_input == (cfg.sde.name == "vesde"), name
    with pytest.raises(OfficialCheckpointError, match="data_shape and sde"):
        official_experiment("ncsnpp_tiny")
    with pytest.raises(OfficialCheckpointError, match="ve/cifar10_ncsnpp_continuous"):
        official_experiment("ve/cifar10_ncsnp")


def test_untrusted_pickle_is_refused_unless_trusted(ve_checkpoint, tmp_path: Path) -> None:
    path = ve_checkpoint[0]
    state = torch.load(path, weights_only=True)
    state["config"] = argparse.Namespace(lr=2e-4)  # an arbitrary object: needs a full unpickle
    unsafe = tmp_path / "unsafe.pth"
    torch.save(state, unsafe)
    kwargs = {"data_shape": (3, 16, 16), "sde_overrides": ["sde.name=vesde"]}
    with pytest.raises(OfficialCheckpointError, match="--trust-checkpoint"):
        load_official_checkpoint(unsafe, "ncsnpp_tiny", **kwargs)
    model, _ = load_official_checkpoint(unsafe, "ncsnpp_tiny", trust_checkpoint=True, **kwargs)
    assert model.net.cfg.nf == 16


def test_wrong_config_says_which_keys_differ(ve_checkpoint) -> None:
    path = ve_checkpoint[0]
    with pytest.raises(OfficialCheckpointError) as err:
        load_official_checkpoint(
            path, "ncsnpp_tiny", data_shape=(3, 16, 16), sde_overrides=["sde.name=vesde"], nf=32
        )
    assert "shape mismatches" in str(err.value)
    assert "all_modules.1.weight: checkpoint (64, 32) vs model (128, 64)" in str(err.value)
    with pytest.raises(OfficialCheckpointError, match=r"missing|unexpected"):
        load_official_checkpoint(
            path,
            "ddpmpp_tiny",
            data_shape=(3, 16, 16),
            sde_overrides=["sde.name=vpsde"],
            use_ema=False,
        )


def test_not_an_official_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(OfficialCheckpointError, match="'model', 'ema'"):
        load_official_checkpoint(
            path, "ncsnpp_tiny", data_shape=(3, 16, 16), sde_overrides=["sde.name=vesde"]
        )
    with pytest.raises(FileNotFoundError):
        load_official_checkpoint(tmp_path / "missing.pth", "ve/cifar10_ncsnpp_continuous")


def test_convert_never_replaces_an_existing_file_nor_its_input(
    ve_checkpoint, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from lightning_score.cli import main

    path = ve_checkpoint[0]
    original = path.read_bytes()
    argv = ["convert", str(path), "--config", "ncsnpp_tiny", "--image-size", "16", "--sde", "vesde"]

    def refused(*extra: str) -> str:
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    # --out equal to the input (also spelled another way): refused, even with --overwrite
    assert "is the input" in refused("--out", str(path), "--overwrite")
    assert "is the input" in refused("--out", str(tmp_path / "x" / ".." / path.name))
    assert path.read_bytes() == original
    # an existing run's checkpoint is not replaced without --overwrite
    run_ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    run_ckpt.parent.mkdir(parents=True)
    run_ckpt.write_bytes(b"a run's own checkpoint")
    assert "last.ckpt exists" in refused("--out", str(run_ckpt))
    assert run_ckpt.read_bytes() == b"a run's own checkpoint"
    assert main([*argv, "--out", str(run_ckpt), "--overwrite"]) == 0
    assert torch.load(run_ckpt, weights_only=True)["global_step"] == 1234
    # the default output beside the input, twice
    assert main(argv) == 0
    assert "checkpoint_26.lscore.ckpt exists" in refused()


def test_convert_a_text_or_truncated_file_is_one_line(
    ve_checkpoint, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from lightning_score.cli import main

    text = tmp_path / "notes.pth"
    text.write_text("epoch 3: loss went down\n" * 20)
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(ve_checkpoint[0].read_bytes()[:5000])
    for bad in (text, truncated):
        argv = ["convert", str(bad), "--config", "ve/cifar10_ncsnpp_continuous"]
        assert main([*argv, "--out", str(tmp_path / "out.ckpt")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "not a checkpoint" in err, err
        assert not (tmp_path / "out.ckpt").exists()
