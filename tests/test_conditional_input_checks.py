"""Hostile numbers and inputs to the conditional commands (issue 18, items 7, 8 and 15): every
non-finite or out-of-range option, bad image array, NaN mask and unreadable image file is refused
in one line on stderr with exit status 2, before any sampling and without writing anything."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from lightning_score.cli import build_parser, main
from lightning_score.conditioning import inverse
from lightning_score.conditioning.inputs import load_images


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser, _ = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_no_command_parses_a_float_without_the_range_check() -> None:
    """A bare `type=float` takes nan and inf: every float option goes through options.number."""
    bare = [
        f"lscore {name} {action.option_strings[0]}"
        for name, sub in _subparsers().items()
        for action in sub._actions
        if action.type is float
    ]
    assert not bare, bare


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["sample-classes", "C", "--out", "O", "--scale", "nan"], "--scale: must be a finite"),
        (["sample-classes", "C", "--out", "O", "--per-class", "0"], "--per-class: must be >= 1"),
        (
            ["inverse", "C", "--task", "cs", "--input", "val", "--out", "O", "--noise-std", "nan"],
            "--noise-std",
        ),
        (
            ["inverse", "C", "--task", "cs", "--input", "val", "--out", "O", "--ratio", "1.5"],
            "> 0 and <= 1",
        ),
        (
            ["inverse", "C", "--task", "superres", "--input", "val", "--out", "O", "--factor", "0"],
            "--factor",
        ),
        (["inpaint", "C", "--input", "val", "--out", "O", "--scale", "inf"], "got 'inf'"),
        (["inpaint", "C", "--input", "val", "--out", "O", "--num-images", "0"], "--num-images"),
        (["inpaint", "C", "--input", "val", "--out", "O", "--samples", "-1"], "--samples"),
        (["colorize", "C", "--input", "val", "--out", "O", "--data-std", "-0.5"], "--data-std"),
        (["sample", "C", "--out", "O", "--snr", "nan"], "--snr: must be a finite number"),
        (["likelihood", "C", "--rtol", "inf"], "--rtol"),
        (["convert", "C", "--sigma-max", "nan"], "--sigma-max"),
    ],
)
def test_non_finite_and_out_of_range_options_are_refused_in_one_line(
    argv: list[str], phrase: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert phrase in err and f"lscore {argv[0]} --help" in err, err
    assert not any(tmp_path.iterdir())


def test_infinite_churn_range_is_still_accepted() -> None:
    """EDM's s_tmax defaults to infinity (churn at every noise level): inf stays a valid value."""
    parser, _ = build_parser()
    args = parser.parse_args(["sample", "C", "--out", "O", "--s-tmax", "inf", "--s-churn", "40"])
    assert args.s_tmax == float("inf") and args.s_churn == 40.0


# -- image arrays, masks and folders ------------------------------------------------------------
def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "phrase"),
    [
        (
            {"images": np.linspace(-2, 3, 4 * 64, dtype=np.float32).reshape(4, 1, 8, 8)},
            "range from -2 to 3",
        ),
        ({"images": np.full((4, 1, 8, 8), np.nan, dtype=np.float32)}, "4 of the 4 images"),
        (
            {
                "arr_0": np.where(np.eye(8) > 0, np.inf, 0.5)
                .astype(np.float32)[None, None]
                .repeat(2, 0)
            },
            "NaN or infinite",
        ),
        (
            {"foo": np.zeros((4, 8, 8), dtype=np.uint8)},
            "holds foo, not images under images or arr_0",
        ),
    ],
)
def test_bad_image_arrays_are_refused_not_clamped(
    arrays: dict[str, np.ndarray], phrase: str, tmp_path: Path
) -> None:
    path = _npz(tmp_path / "in.npz", **arrays)
    with pytest.raises(ValueError, match="") as err:
        load_images(path, (1, 8, 8))
    assert phrase in str(err.value) and str(path) in str(err.value), err.value


@pytest.mark.parametrize("content", [b"hello\n", bytes(range(256)) * 4, b"PK\x03\x04 cut"])
def test_files_that_are_not_numpy_arrays_are_refused_without_unsafe_advice(
    content: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "in.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        load_images(path, (1, 8, 8))
    message = str(err.value)
    assert str(path) in message and "not a numpy file of plain arrays" in message, message
    assert "pickle" not in message.lower(), message  # numpy's own text suggests unsafe loading
    objects = tmp_path / "objects.npz"
    np.savez(objects, images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="holding Python objects"):
        load_images(objects, (1, 8, 8))


def test_valid_float_and_uint8_arrays_still_load(tmp_path: Path) -> None:
    floats = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    x = load_images(_npz(tmp_path / "f.npz", images=floats), (1, 8, 8))
    np.testing.assert_allclose(x.numpy(), floats)
    grey = (floats[:, 0] * 255).astype(np.uint8)
    y = load_images(_npz(tmp_path / "u.npz", arr_0=grey), (1, 8, 8))
    np.testing.assert_allclose(y.numpy()[:, 0], grey / 255.0, atol=1e-6)


@pytest.fixture
def no_sampling(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("started sampling before refusing the input")

    monkeypatch.setattr(inverse, "restore", never)


def _refused(capsys, argv: list[str], *phrases: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for phrase in phrases:
        assert phrase in err, err


def test_commands_refuse_bad_arrays_and_nan_masks(
    checkpoint: Path, tmp_path: Path, capsys, no_sampling
) -> None:
    good = _npz(tmp_path / "good.npz", images=np.zeros((2, 8, 8), dtype=np.uint8))
    signed = _npz(tmp_path / "signed.npz", images=np.full((2, 1, 8, 8), -1.0, dtype=np.float32))
    mask = np.ones((8, 8), dtype=np.float32)
    mask[:, 4:] = np.nan
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "out"
    base = ["inpaint", str(checkpoint), "--out", str(out), "--no-progress", "--steps", "2"]
    _refused(capsys, [*base, "--input", str(signed)], "range from -1 to -1", "rescale")
    _refused(
        capsys,
        [*base, "--input", str(good), "--mask", str(tmp_path / "mask.npy")],
        "mask.npy holds 32 NaN or infinite values",
    )
    (tmp_path / "text.npy").write_text("not a mask")
    _refused(
        capsys,
        [*base, "--input", str(good), "--mask", str(tmp_path / "text.npy")],
        "text.npy is not a numpy file of plain arrays",
    )
    assert not out.exists()


def test_an_unreadable_image_in_an_input_folder_is_named(
    checkpoint: Path, tmp_path: Path, capsys, no_sampling
) -> None:
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"this is not a PNG")
    out = tmp_path / "out"
    for command in (["inpaint"], ["inverse", "--task", "superres"], ["colorize"]):
        argv = [*command, str(checkpoint), "--input", str(folder), "--out", str(out)]
        _refused(capsys, argv, "broken.png is not a readable image", "remove or replace it")
    assert not out.exists()
