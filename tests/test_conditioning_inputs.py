"""Class-conditional networks, labels from the data, and the one-line errors of conditional
generation on bad input (tiny models: seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_score.cli import main
from lightning_score.conditioning.classifier import check_classifier_fits, load_classifier_config
from lightning_score.conditioning.guidance import classifier_free_guided
from lightning_score.conditioning.inputs import load_images
from lightning_score.conditioning.inverse import solve_inverse
from lightning_score.conditioning.operators import AveragePool, Colorization, Mask
from lightning_score.config import ConfigError, DataConfig, SamplingConfig
from lightning_score.data import build_datamodule
from lightning_score.experiment import build_score_model, load_config
from lightning_score.training.checkpoint import load_score_model
from lightning_score.training.module import ScoreModule
from lightning_score.training.run import train

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "checkpoint.every_n_steps=2",
    "sample_grid.every_n_steps=100000",
    "sample_grid.num=4",
    "sampling.steps=5",
]


def _one_line_error(capsys: pytest.CaptureFixture[str], command: list[str], *phrases: str) -> None:
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for phrase in phrases:
        assert phrase in err, err


# -- networks and labels -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "data", "kwargs"),
    [
        ("unet", ["data.image_size=8"], ["model.kwargs.channels=[8,16]"]),
        ("ncsnpp_tiny", ["data.image_size=8"], []),
        ("ddpmpp_tiny", ["data.image_size=8"], []),
        ("mlp", ["data.name=toy2d"], []),
    ],
)
def test_class_conditional_networks_embed_the_label(
    name: str, data: list[str], kwargs: list[str]
) -> None:
    """Labels change the output; no label is the "no class" label num_classes."""
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [f"model.name={name}", *data, *kwargs])
    cfg.model.num_classes = 3  # after the checks: neither data set here has 3 classes
    model = build_score_model(cfg).eval()
    torch.manual_seed(0)
    for p in model.parameters():  # leave the zero-initialized output layers
        p.data.normal_(0, 0.2)
    shape = (4, 2) if name == "mlp" else (4, 1, 8, 8)
    x, t = torch.randn(shape), torch.full((4,), 0.5)
    with torch.no_grad():
        by_label = [model(x, t, torch.full((4,), c)) for c in range(4)]
        assert torch.equal(model(x, t), by_label[3])
    assert model.num_classes == 3
    assert not torch.allclose(by_label[0], by_label[1])
    assert not torch.allclose(by_label[0], by_label[3])


def test_unconditional_models_refuse_labels_and_classifier_free_guidance(checkpoint: Path) -> None:
    model, _ = load_score_model(checkpoint)  # an unconditional checkpoint still loads as before
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 0.5)
    with pytest.raises(ValueError, match="unconditional model"):
        model(x, t, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"model\.num_classes=0"):
        classifier_free_guided(model, torch.zeros(2, dtype=torch.long), 3.0)


def test_label_dropout_replaces_the_configured_fraction_by_no_class() -> None:
    cfg = load_config(ROOT / "configs" / "digits_cfg.yaml", ["model.kwargs.channels=[8,16]"])
    module = ScoreModule.from_config(cfg)
    labels = torch.arange(10).repeat(2000)
    batch = (torch.rand(labels.numel(), 1, 8, 8), labels)
    torch.manual_seed(0)
    dropped = module._labels(batch, drop=True) == 10
    # binomial SE sqrt(0.2 * 0.8 / 20000) = 0.0028
    assert abs(dropped.float().mean().item() - 0.2) < 4.5 * 0.0028
    assert torch.equal(module._labels(batch, drop=False), labels)


def test_training_refuses_data_labels_beyond_num_classes() -> None:
    cfg = load_config(ROOT / "configs" / "digits_cfg.yaml", ["model.kwargs.channels=[8,16]"])
    module = ScoreModule.from_config(cfg)
    batch = (torch.rand(4, 1, 8, 8), torch.tensor([0, 3, 12, 1]))
    with pytest.raises(ValueError, match="label 12, outside"):
        module._labels(batch, drop=True)


def test_folder_labels_come_from_class_subfolders(tmp_path: Path) -> None:
    for cls, colour in (("cats", 200), ("dogs", 50)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (colour, 0, 0)).save(tmp_path / cls / f"{i}.png")
    cfg = DataConfig(name="folder", root=str(tmp_path), image_size=8, val_fraction=0.0)
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    items = [datamodule.train_set[i] for i in range(6)]
    by_label = {int(label): float(x[0].mean()) for x, label in items}
    assert by_label[0] > 0.7 and by_label[1] < 0.3  # cats (bright) 0, dogs (dark) 1


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        (["model.num_classes=5"], "has 10 classes"),
        (["data.name=celeba"], "has no labels"),
        (["model.label_dropout=1.5"], "model.label_dropout"),
        (["model.num_classes=-1"], "model.num_classes must be >= 0"),
    ],
)
def test_class_conditional_config_errors_name_the_key(overrides: list[str], phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        load_config(ROOT / "configs" / "digits_cfg.yaml", overrides)


CLASSIFIER_CONFIGS = sorted((ROOT / "configs" / "classifier").glob("*.yaml"))


@pytest.mark.parametrize("path", CLASSIFIER_CONFIGS, ids=[p.stem for p in CLASSIFIER_CONFIGS])
def test_shipped_classifier_configs_load_and_validate(path: Path) -> None:
    cfg = load_classifier_config(path)
    assert cfg.name and cfg.num_classes == 10


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        (["data.name=celeba"], "has no labels"),
        (["num_classes=7"], "has 10 classes"),
        (["noise.time_sampler=importance"], "noise.time_sampler"),
        (["net.channels=[]"], "net.channels"),
    ],
)
def test_classifier_config_errors_name_the_key(overrides: list[str], phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        load_classifier_config(ROOT / "configs" / "classifier" / "digits.yaml", overrides)


# -- one-line errors of the commands ------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "digits.npz"
    rng = np.random.default_rng(0)
    np.savez(path, rng.integers(0, 256, size=(3, 8, 8), dtype=np.uint8))
    return path


@pytest.fixture(scope="module")
def other_sde_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`lscore train-classifier` for 2 steps, on the VE SDE (the quickstart model is VP)."""
    out = tmp_path_factory.mktemp("classifier")
    overrides = [f"out_dir={out}", "sde.name=vesde", "net.channels=[8,16]", *TINY[:4]]
    config = str(ROOT / "configs" / "classifier" / "digits.yaml")
    assert main(["train-classifier", "--config", config, *overrides]) == 0
    return out / "classifier_digits" / "checkpoints" / "last.ckpt"


def test_classifier_for_another_sde_or_shape_is_refused(
    capsys, checkpoint: Path, other_sde_classifier: Path, tmp_path: Path
) -> None:
    command = ["sample-classes", str(checkpoint), "--out", str(tmp_path), "--no-progress"]
    _one_line_error(capsys, [*command, "--classifier", str(other_sde_classifier)], "another SDE")
    _, model_cfg = load_score_model(checkpoint)
    bigger = load_classifier_config(
        ROOT / "configs" / "classifier" / "digits.yaml", ["data.image_size=16"]
    )
    with pytest.raises(ValueError, match=r"shape \(1, 16, 16\), the score model makes \(1, 8, 8\)"):
        check_classifier_fits(bigger, model_cfg)


def test_outputs_are_kept_and_classifier_runs_not_overwritten(
    capsys, checkpoint: Path, digits_npz: Path, other_sde_classifier: Path, tmp_path: Path
) -> None:
    (tmp_path / "restoration.png").write_bytes(b"keep")
    command = ["inpaint", str(checkpoint), "--input", str(digits_npz), "--out", str(tmp_path)]
    _one_line_error(capsys, [*command, "--steps", "3"], "exists", "--overwrite")
    assert (tmp_path / "restoration.png").read_bytes() == b"keep"
    out = other_sde_classifier.parents[2]
    overrides = [f"out_dir={out}", "sde.name=vesde", "net.channels=[8,16]", *TINY[:4]]
    config = str(ROOT / "configs" / "classifier" / "digits.yaml")
    _one_line_error(
        capsys, ["train-classifier", "--config", config, *overrides], "already holds a classifier"
    )


def test_class_id_out_of_range_and_guidance_of_an_unconditional_model(
    capsys, checkpoint: Path, tmp_path: Path
) -> None:
    command = ["sample-classes", str(checkpoint), "--out", str(tmp_path), "--no-progress"]
    _one_line_error(capsys, command, "unconditional", "model.num_classes=0")
    _one_line_error(
        capsys,
        [*command, "--classifier", str(checkpoint)],
        "not a noisy-classifier checkpoint",
    )
    cfg_model = build_score_model(
        load_config(ROOT / "configs" / "digits_cfg.yaml", ["model.kwargs.channels=[8,16]"])
    )
    with pytest.raises(ValueError, match="class id 12 is out of range"):
        classifier_free_guided(cfg_model, torch.tensor([1, 12]))


def test_mask_and_measurement_shape_mismatches(
    capsys, checkpoint: Path, digits_npz: Path, tmp_path: Path
) -> None:
    np.save(tmp_path / "mask16.npy", np.ones((16, 16)))
    command = ["inpaint", str(checkpoint), "--input", str(digits_npz), "--out", str(tmp_path)]
    command += ["--steps", "3", "--no-progress"]
    _one_line_error(capsys, [*command, "--mask", str(tmp_path / "mask16.npy")], "mask of shape")
    _one_line_error(capsys, [*command, "--mask", "diagonal"], "neither a mask name")
    model, _ = load_score_model(checkpoint)
    with pytest.raises(ValueError, match=r"measurements of shape \(1, 8, 8\) do not fit"):
        solve_inverse(
            model,
            model.sde,
            (1, 8, 8),
            AveragePool(2),
            torch.zeros(2, 1, 8, 8),
            SamplingConfig(steps=3),
        )


def test_methods_refuse_what_they_cannot_do(
    capsys, checkpoint: Path, digits_npz: Path, tmp_path: Path
) -> None:
    command = ["inpaint", str(checkpoint), "--input", str(digits_npz), "--out", str(tmp_path)]
    command += ["--steps", "3", "--no-progress"]
    _one_line_error(capsys, [*command, "--sampler", "ode"], "adaptive solver")
    _one_line_error(capsys, [*command, "--noise-std", "0.1"], "noiseless", "dps")
    _one_line_error(
        capsys,
        [*command, "--sampler", "heun", "--resample-jump", "2", "--resample-repeats", "2"],
        "sampling.sampler=pc",
    )
    colorize = ["colorize", str(checkpoint), "--input", str(digits_npz), "--out", str(tmp_path)]
    _one_line_error(capsys, [*colorize, "--no-progress"], "colorization needs RGB")


def test_dps_on_a_tiny_model_writes_finite_results(
    checkpoint: Path, digits_npz: Path, tmp_path: Path
) -> None:
    """Noisy inpainting by measurement guidance with every kind of sampler step (pc, heun)."""
    for sampler in ("pc", "heun"):
        out = tmp_path / sampler
        command = ["inpaint", str(checkpoint), "--input", str(digits_npz), "--out", str(out)]
        command += ["--conditioning", "dps", "--noise-std", "0.05", "--sampler", sampler]
        assert main([*command, "--steps", "4", "--samples", "2", "--no-progress"]) == 0
        with np.load(out / "restoration.npz") as data:
            assert data["arr_0"].shape == (6, 8, 8, 3) and np.isfinite(data["measurement"]).all()


# -- colorization on an RGB model --------------------------------------------------------------
@pytest.fixture(scope="module")
def rgb_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-step quickstart on a folder of random 8x8 RGB images, and that folder."""
    images = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(
            images / f"{i}.png"
        )
    out = tmp_path_factory.mktemp("run")
    overrides = [f"out_dir={out}", "data.name=folder", f"data.root={images}", "data.batch_size=4"]
    overrides += ["model.kwargs.channels=[8,16]", *TINY]
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", overrides)
    return train(cfg) / "checkpoints" / "last.ckpt", images


def test_colorize_keeps_the_grey_image_of_the_input(rgb_checkpoint, tmp_path: Path) -> None:
    """The samples' grey channel (r + g + b) / sqrt(3) is the observation's (model space: the
    images written are clamped to [0, 1], which a 2-step model leaves)."""
    ckpt, images = rgb_checkpoint
    command = ["colorize", str(ckpt), "--input", str(images), "--out", str(tmp_path)]
    assert main([*command, "--steps", "5", "--samples", "2", "--no-progress"]) == 0
    with np.load(tmp_path / "restoration.npz") as data:
        assert data["arr_0"].shape == (16, 8, 8, 3) and data["measurement"].shape == (8, 1, 8, 8)
    assert (tmp_path / "restoration.png").is_file()

    model, _ = load_score_model(ckpt)
    truth = load_images(images, (3, 8, 8))
    y = Colorization()(model.sde.scale_data(truth))
    out = solve_inverse(
        model, model.sde, (3, 8, 8), Colorization(), y, SamplingConfig(steps=5), samples_per_input=2
    )
    samples = out.samples.flatten(0, 1)
    assert torch.allclose(Colorization()(samples), y.repeat_interleave(2, 0), atol=1e-5)
    assert (samples - model.sde.scale_data(truth).repeat_interleave(2, 0)).abs().max() > 0.1


def test_mask_operator_fits_and_measures() -> None:
    mask = Mask(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    mask.check((3, 2, 2))
    with pytest.raises(ValueError, match="does not fit"):
        mask.check((3, 4, 4))
