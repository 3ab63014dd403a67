"""Issue 4, part 1: singular and rectangular M reach the pseudo-inverse; ridge its minimiser."""

import pytest
import torch
from conftest import quiet_trainer

from gdinv_modules import LitInverse, MatrixDataModule, SingularMatrixWarning, invert
from gdinv_modules.core.errors import MatrixShapeError
from gdinv_modules.core.matrices import low_rank_matrix, random_matrix, spd_matrix
from gdinv_modules.core.rank import product_target

F64 = torch.float64
EPS = torch.finfo(F64).eps


def test_singular_square_matrix_reaches_the_pseudo_inverse_with_a_warning():
    matrix = low_rank_matrix(6, 4, dtype=F64)
    with pytest.warns(SingularMatrixWarning, match=r"rank 4 of 6.*0\.05556"):
        result = invert(matrix, tol=1e-10)
    assert bool(result.converged)
    pinv = torch.linalg.pinv(matrix)
    torch.testing.assert_close(result.inverse, pinv, atol=1e-8 * pinv.abs().max().item(), rtol=0)
    report = result.report
    assert report.rank == [4] and report.loss_floor[0] == pytest.approx(2 / 36, rel=1e-12)
    assert result.losses[-1].item() == pytest.approx(2 / 36, rel=1e-9)
    assert report.steps < 100_000
    # The loss resolves its excess over the floor f only to 4 ulps of f: sqrt(6 * 4 eps f) is
    # about 1.7e-8, so the step that reached 1e-10 cannot be read from the losses.
    assert report.steps_to_tol == [None]


def test_the_step_to_tol_of_a_singular_matrix_is_read_where_the_loss_resolves_it():
    matrix = low_rank_matrix(6, 4, dtype=F64)
    with pytest.warns(SingularMatrixWarning):
        result = invert(matrix, tol=1e-6, refine=False)
    step = result.report.steps_to_tol[0]
    assert step is not None
    excess = result.losses - 2 / 36
    assert 6 * excess[step].item() <= 1e-12 < 6 * excess[step - 1].item()


def test_the_loss_floor_is_exact_for_any_x():
    matrix = low_rank_matrix(5, 3, dtype=F64)
    rank, projector = product_target(matrix)
    x = torch.randn(5, 5, dtype=F64)
    lhs = (x @ matrix - torch.eye(5, dtype=F64)).square().sum()
    rhs = (x @ matrix - projector).square().sum() + (5 - rank.item())
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-12)


def test_from_a_random_start_a_singular_m_gets_another_generalised_inverse():
    matrix = low_rank_matrix(5, 3, dtype=F64)
    with pytest.warns(SingularMatrixWarning):
        result = invert(matrix, tol=1e-10, init="random")
    assert bool(result.converged)
    pinv = torch.linalg.pinv(matrix)
    torch.testing.assert_close(result.inverse @ matrix, pinv @ matrix, atol=1e-8, rtol=0)
    assert (result.inverse - pinv).abs().max() > 1e-3


@pytest.mark.parametrize("formulation, shape", [("left", (7, 4)), ("right", (4, 7))])
def test_full_rank_rectangular_matrix_gets_a_one_sided_inverse(formulation, shape):
    matrix = low_rank_matrix(shape[1], min(shape), rows=shape[0], dtype=F64)
    result = invert(matrix, tol=1e-10, formulation=formulation)
    assert bool(result.converged) and result.inverse.shape == (shape[1], shape[0])
    estimate = result.inverse @ matrix if formulation == "left" else matrix @ result.inverse
    k = estimate.shape[-1]
    torch.testing.assert_close(estimate, torch.eye(k, dtype=F64), atol=1e-9, rtol=0)
    pinv = torch.linalg.pinv(matrix)
    torch.testing.assert_close(result.inverse, pinv, atol=1e-8 * pinv.abs().max().item(), rtol=0)


@pytest.mark.parametrize("formulation, shape", [("left", (4, 7)), ("right", (7, 4))])
def test_rectangular_matrix_without_that_rank_reaches_pinv_and_says_so(formulation, shape):
    matrix = low_rank_matrix(shape[1], min(shape), rows=shape[0], dtype=F64)
    with pytest.warns(SingularMatrixWarning, match="rank 4 of 7"):
        result = invert(matrix, tol=1e-10, formulation=formulation)
    pinv = torch.linalg.pinv(matrix)
    torch.testing.assert_close(result.inverse, pinv, atol=1e-8 * pinv.abs().max().item(), rtol=0)
    assert result.report.loss_floor[0] == pytest.approx(3 / 49, rel=1e-12)


def test_symmetric_formulation_refuses_rectangular_matrices():
    with pytest.raises(MatrixShapeError, match="square"):
        invert(torch.rand(3, 5, dtype=F64), formulation="symmetric")


def test_batch_mixing_singular_and_regular_matrices():
    batch = torch.stack(
        [low_rank_matrix(5, 2, dtype=F64), spd_matrix(5, condition=10.0, dtype=F64)]
    )
    with pytest.warns(SingularMatrixWarning, match=r"batch index \(0,\)"):
        result = invert(batch, tol=1e-10)
    assert result.converged.all()
    assert result.report.rank == [2, 5]
    for index in range(2):
        pinv = torch.linalg.pinv(batch[index])
        torch.testing.assert_close(
            result.inverse[index], pinv, atol=1e-8 * pinv.abs().max().item(), rtol=0
        )


@pytest.mark.parametrize("formulation", ["left", "right"])
@pytest.mark.parametrize("ridge", [1e-3, 0.1])
def test_ridge_reaches_its_closed_form_minimiser(formulation, ridge):
    """min ||XM - I||^2 / k^2 + ridge ||X||^2 has X* = M^T (M M^T + ridge k^2 I)^-1 (left) and
    X* = (M^T M + ridge k^2 I)^-1 M^T (right)."""
    matrix = low_rank_matrix(5, 5, rows=6, dtype=F64)  # 6 x 5, ill-conditioned enough
    k = 5 if formulation == "left" else 6
    if formulation == "left":
        exact = matrix.T @ torch.linalg.inv(
            matrix @ matrix.T + ridge * k * k * torch.eye(6, dtype=F64)
        )
    else:
        exact = (
            torch.linalg.inv(matrix.T @ matrix + ridge * k * k * torch.eye(5, dtype=F64)) @ matrix.T
        )
    result = invert(matrix, tol=1e-11, ridge=ridge, formulation=formulation, check_rank=False)
    assert bool(result.converged)
    scale = exact.abs().max().item()
    torch.testing.assert_close(result.inverse, exact, atol=1e-9 * scale, rtol=0)


def test_ridge_helps_an_ill_conditioned_matrix():
    hilbert = torch.tensor([[1 / (i + j + 1) for j in range(6)] for i in range(6)], dtype=F64)
    result = invert(hilbert, tol=1e-10, ridge=1e-6, max_steps=20_000, check_rank=False)
    assert bool(result.converged) and result.report.steps < 20_000


def test_low_rank_kind_in_the_datamodule_trains_to_the_pseudo_inverse():
    data = MatrixDataModule("low_rank", n=6, rank=3, rows=8, dtype="float64")
    assert data.matrix.shape == (8, 6)
    model = LitInverse(lr="auto", momentum="auto", init="zeros", tol=1e-10)
    with pytest.warns(SingularMatrixWarning):
        quiet_trainer(max_steps=50_000).fit(model, datamodule=data)
    pinv = torch.linalg.pinv(data.matrix)
    torch.testing.assert_close(model.inverse, pinv, atol=1e-8 * pinv.abs().max().item(), rtol=0)


def test_full_rank_matrices_get_no_warning(recwarn):
    invert(random_matrix(5, dtype=F64), tol=1e-8)
    assert not [w for w in recwarn if issubclass(w.category, SingularMatrixWarning)]


@pytest.mark.parametrize(
    "shape, formulation, other", [((5, 7), "left", "right"), ((7, 5), "right", "left")]
)
def test_a_full_rank_rectangular_m_is_pointed_to_the_formulation_that_inverts_it(
    shape, formulation, other
):
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.warns(SingularMatrixWarning, match=f"formulation='{other}' gives X with"):
        invert(matrix, formulation=formulation, max_steps=10)
