"""Model cards with Hugging Face front matter, a snippet that runs, metrics with their reference
set and sample count, honest provenance; `lscore export --push-to-hub` through huggingface_hub,
refused in one line offline or without a token. Nothing here reaches the network."""

from __future__ import annotations

import json
import re
from pathlib import Path

import huggingface_hub
import pytest
import yaml
from huggingface_hub import HfApi, constants

from lightning_score.cli import main
from lightning_score.interop.hub import HubError
from lightning_score.interop.pipeline import ScorePipeline


def _card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


def _python_block(body: str) -> str:
    return re.search(r"```python\n(.*?)```", body, re.S)[1]


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No token anywhere, an empty cache, and offline mode off unless a test turns it on."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert huggingface_hub.get_token() is None


def test_card_front_matter_runnable_snippet_and_metric_references(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_eval = checkpoint.parent.parent / "eval"
    run_eval.mkdir(exist_ok=True)
    record = {
        "step": 2,
        "metrics": {"fid_200": 41.5},
        "nfe": 20,
        "num_samples": 200,
        "reference_set": "digits training split, 500 images",
    }
    (run_eval / "eval_step0000002.json").write_text(json.dumps(record))
    out = tmp_path / "export"
    assert main(["export", str(checkpoint), "--format", "safetensors", "--out", str(out)]) == 0
    meta, body = _card(out)
    assert meta["library_name"] == "lightning-score" and meta["license"] == "other"
    assert meta["pipeline_tag"] == "unconditional-image-generation"
    assert {"lightning-score", "vpsde", "data-digits"} <= set(meta["tags"])
    assert "trained with lightning-score" in body and "EMA (decay 0.995)" in body
    row = "| fid_200 | 41.5 | step 2, num_samples 200, nfe 20 | digits training split, 500 images |"
    assert row in body
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(_python_block(body), scope)  # the card's snippet, as a reader would paste it
    # 20 dpmpp_2m steps and the final denoising (Tweedie) step
    assert scope["out"].samples.shape == (16, 1, 8, 8) and scope["out"].nfe == 21
    assert (tmp_path / "sample.png").is_file()


def test_imported_diffusers_weights_say_where_they_come_from(
    checkpoint: Path, tmp_path: Path
) -> None:
    assert (
        main(["export", str(checkpoint), "--format", "diffusers", "--out", str(tmp_path / "df")])
        == 0
    )
    meta, body = _card(tmp_path / "df")
    assert meta["library_name"] == "diffusers"
    assert "ScorePipeline.from_pretrained(" in body and "data='digits'" in body
    assert (
        main(["convert", str(tmp_path / "df"), "--data", "digits", "--out", str(tmp_path / "conv")])
        == 0
    )
    assert (
        main(
            [
                "export",
                str(tmp_path / "conv"),
                "--format",
                "safetensors",
                "--out",
                str(tmp_path / "again"),
            ]
        )
        == 0
    )
    for folder in ("conv", "again"):  # the provenance survives a re-export
        _, body = _card(tmp_path / folder)
        assert "converted from the diffusers model `df`" in body
        assert "not trained by lightning-score" in body
        assert "trained with lightning-score" not in body and "EMA (decay" not in body


def _export_args(checkpoint: Path, out: Path, repo: str) -> list[str]:
    return [
        "export",
        str(checkpoint),
        "--format",
        "safetensors",
        "--out",
        str(out),
        "--push-to-hub",
        repo,
    ]


@pytest.mark.usefixtures("no_hub")
def test_push_is_refused_in_one_line_before_anything_is_written(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "export"
    assert main(_export_args(checkpoint, out, "me/model")) == 2
    assert "no Hugging Face token: run `hf auth login` or set HF_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert main(_export_args(checkpoint, out, "not a repo!")) == 2
    assert "not a Hub repo id" in capsys.readouterr().err
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(_export_args(checkpoint, out, "me/model")) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE is set" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.usefixtures("no_hub")
def test_push_uploads_the_export_and_a_failed_upload_keeps_it(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    calls: list[dict] = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://hub/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(kw))
    out = tmp_path / "export"
    assert main([*_export_args(checkpoint, out, "me/model"), "--private"]) == 0
    assert calls == [
        dict(
            repo_id="me/model",
            folder_path=out,
            repo_type="model",
            commit_message="Upload lightning-score export",
        )
    ]
    assert "pushed" in capsys.readouterr().out
    _, body = _card(out)
    assert 'ScorePipeline.from_pretrained("me/model")' in body  # the card loads from the Hub

    def unreachable(self, **kw):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(HfApi, "upload_folder", unreachable)
    assert main([*_export_args(checkpoint, out, "me/model"), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "the upload failed (Failed to resolve 'huggingface.co'); the export is kept in" in err
    assert (out / "model.safetensors").is_file()


@pytest.mark.usefixtures("no_hub")
def test_pipeline_from_an_unreachable_hub_repo_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="neither a local path nor a Hub repo that can be fetched"):
        ScorePipeline.from_pretrained("me/not-cached")


def test_weights_converted_from_score_sde_pytorch_are_credited_to_their_authors(
    checkpoint: Path, tmp_path: Path
) -> None:
    import torch

    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["converted_from"] = {"path": "/x/checkpoint_26.pth", "config": "vp/digits", "step": 26}
    torch.save(ckpt, tmp_path / "converted.ckpt")
    out = tmp_path / "export"
    assert (
        main(
            [
                "export",
                str(tmp_path / "converted.ckpt"),
                "--format",
                "safetensors",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    _, body = _card(out)
    assert "converted from the score_sde_pytorch checkpoint `checkpoint_26.pth`" in body
    assert "(official config `vp/digits`, step 26)" in body and "not by lightning-score" in body
    assert "trained with lightning-score" not in body
