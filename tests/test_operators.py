"""The measurement operators against their dense matrices: adjoint, pseudo-inverse, the solve
with (s I + r A A^T), and the replacement / noise conventions of the mask."""

from __future__ import annotations

import pytest
import torch

from lightning_score.conditioning.operators import (
    AveragePool,
    Blur,
    Colorization,
    LinearOperator,
    Mask,
    RandomProjection,
    gaussian_kernel,
    load_mask,
    named_mask,
)

SHAPE = (3, 4, 4)
D = torch.float64


def _operators() -> dict[str, LinearOperator]:
    mask = torch.zeros(4, 4)
    mask[:, :2] = 1
    return {
        "mask": Mask(mask),
        "colorize": Colorization(),
        "superres": AveragePool(2),
        "cs": RandomProjection(SHAPE, 20, seed=1),
        "deblur": Blur(gaussian_kernel(3, 0.7)),
    }


def _dense(op: LinearOperator) -> torch.Tensor:
    """A as a (measurements, D) matrix, column by column."""
    basis = torch.eye(48, dtype=D).reshape(48, *SHAPE)
    return op(basis).reshape(48, -1).T


@pytest.mark.parametrize("name", list(_operators()))
def test_operator_algebra_matches_the_dense_matrix(name: str) -> None:
    op = _operators()[name]
    op.check(SHAPE)
    a = _dense(op)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, *SHAPE, generator=gen, dtype=D)
    y = op(x)
    v = torch.randn(y.shape, generator=gen, dtype=D)
    assert torch.allclose(op.adjoint(v).reshape(2, -1), v.reshape(2, -1) @ a, atol=1e-10)
    # on the range of A (y = A x), A^+ y is the least-norm solution pinv(A) y
    expected = y.reshape(2, -1) @ torch.linalg.pinv(a, rtol=1e-3).T
    assert torch.allclose(op.pinv(y).reshape(2, -1), expected, atol=1e-8)
    assert torch.allclose(op(op.project(x, 2 * y)), 2 * y, atol=1e-8)
    scale = torch.tensor([0.5, 2.0], dtype=D)
    for noise_var in (0.1, 1e-3):
        for i in range(2):
            gram = noise_var * torch.eye(a.shape[0], dtype=D) + scale[i] * a @ a.T
            if name == "mask":  # unmeasured entries are 0 in y and v alike: solve on the rest
                keep = a.abs().sum(1) > 0
                vi = v[i].reshape(-1) * keep
                solved = torch.zeros_like(vi)
                solved[keep] = torch.linalg.solve(gram[keep][:, keep], vi[keep])
                got = op.gram_solve(v[i : i + 1] * op.mask.to(D), noise_var, scale[i : i + 1])
            else:
                solved = torch.linalg.solve(gram, v[i].reshape(-1))
                got = op.gram_solve(v[i : i + 1], noise_var, scale[i : i + 1])
            assert torch.allclose(got.reshape(-1), solved, atol=1e-8), name


def test_mask_measures_only_the_known_entries() -> None:
    mask = named_mask("center", (4, 4))
    assert mask.sum() == 12 and mask[1:3, 1:3].sum() == 0
    y = Mask(mask).measure(torch.ones(5, 1, 4, 4), 0.3, torch.Generator().manual_seed(0))
    assert (y[:, :, 1:3, 1:3] == 0).all() and (y[:, :, 0] != 1).all()


def test_masks_by_name_and_from_files(tmp_path) -> None:
    import numpy as np
    from PIL import Image

    random = named_mask("random:0.25", (32, 32), seed=3)
    assert abs(1 - random.mean().item() - 0.25) < 0.06
    assert torch.equal(random, load_mask("random:0.25", (32, 32), seed=3))
    Image.fromarray(np.kron(np.eye(2, dtype=np.uint8) * 255, np.ones((2, 2), np.uint8))).save(
        tmp_path / "m.png"
    )
    assert load_mask(str(tmp_path / "m.png"), (4, 4)).tolist()[0] == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="neither a mask name"):
        load_mask("diagonal", (4, 4))
