"""The pure math: estimates, losses, residuals and the closed-form gradient."""

import math

import pytest
import torch

from gdinv_modules.core.errors import InvalidOptionError
from gdinv_modules.core.formulation import FORMULATIONS, LEFT, RIGHT
from gdinv_modules.core.functional import (
    identity_mse,
    identity_sse,
    inverse_product,
    inverse_shape,
    loss_and_gradient,
    loss_and_gradient_at_zero,
    relative_residual,
    wide_residual,
)
from gdinv_modules.core.matrices import random_matrix, spd_matrix


def test_estimates_are_the_posts_three_formulations():
    x, m = random_matrix(3, seed=1), random_matrix(3, seed=2)
    assert torch.equal(inverse_product(x, m, "left"), x @ m)
    assert torch.equal(inverse_product(x, m, "right"), m @ x)
    torch.testing.assert_close(inverse_product(x, m, "symmetric"), (x @ m + m @ x) / 2)


def test_identity_mse_matches_the_posts_mse():
    estimate = random_matrix(4, batch_shape=(3,), dtype=torch.float64)
    eye = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(identity_mse(estimate), ((estimate - eye) ** 2).mean())
    per_matrix = identity_mse(estimate, reduction="none")
    assert per_matrix.shape == (3,)
    torch.testing.assert_close(per_matrix, ((estimate - eye) ** 2).mean(dim=(-2, -1)))
    sse, count = identity_sse(estimate)
    assert count == 48
    torch.testing.assert_close(sse, ((estimate - eye) ** 2).sum())


def test_relative_residual_is_frobenius_over_sqrt_n():
    estimate = random_matrix(5, batch_shape=(2,), dtype=torch.float64)
    expected = torch.linalg.matrix_norm(estimate - torch.eye(5, dtype=torch.float64)) / math.sqrt(5)
    torch.testing.assert_close(relative_residual(estimate), expected)
    assert relative_residual(torch.eye(5)).item() == 0.0


@pytest.mark.parametrize("formulation", list(FORMULATIONS))
@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 2)])
def test_closed_form_gradient_equals_autograd(formulation, batch_shape):
    m = random_matrix(5, seed=3, batch_shape=batch_shape, dtype=torch.float64)
    x = random_matrix(5, seed=4, batch_shape=batch_shape, dtype=torch.float64).requires_grad_()
    identity_mse(inverse_product(x, m, formulation), reduction="none").sum().backward()
    loss, gradient = loss_and_gradient(x.detach(), m, formulation)
    assert loss.shape == batch_shape
    torch.testing.assert_close(gradient, x.grad, rtol=1e-12, atol=1e-14)
    expected = identity_mse(inverse_product(x.detach(), m, formulation), reduction="none")
    torch.testing.assert_close(loss, expected)


def test_gradient_vanishes_at_the_inverse():
    m = spd_matrix(4, condition=10.0, dtype=torch.float64)
    for formulation in FORMULATIONS:
        _, gradient = loss_and_gradient(torch.linalg.inv(m), m, formulation)
        assert gradient.abs().max() < 100 * torch.finfo(torch.float64).eps


@pytest.mark.parametrize(
    "left_shape, right_shape",
    [((3, 4), (4, 5)), ((6, 3, 4), (6, 4, 5)), ((2, 3, 3, 4), (2, 3, 4, 5)), ((3, 4), (6, 4, 5))],
)
def test_the_gradient_applies_its_scale_in_the_product(left_shape, right_shape):
    generator = torch.Generator().manual_seed(5)
    error = torch.randn(left_shape, generator=generator, dtype=torch.float64)
    matrix_h = torch.randn(right_shape, generator=generator, dtype=torch.float64)
    matrix = matrix_h.mH  # the gradient multiplies by M^H: left is error @ M^H
    # A power of 2 scales exactly, wherever BLAS applies it; other scales round once more.
    assert torch.equal(LEFT.gradient(error, matrix, 0.125), (error * 0.125) @ matrix_h)
    torch.testing.assert_close(LEFT.gradient(error, matrix, 0.3), 0.3 * (error @ matrix_h))
    # right is M^H @ error, here with non-contiguous operands
    transposed = RIGHT.gradient(error.mT, matrix_h.mT.mH, 0.25)
    assert torch.equal(transposed, (0.25 * matrix_h.mT) @ error.mT)


def test_loss_and_gradient_leave_their_inputs_alone():
    m = random_matrix(4, batch_shape=(2,), dtype=torch.float64)
    x = random_matrix(4, seed=9, batch_shape=(2,), dtype=torch.float64)
    before = (x.clone(), m.clone())
    for formulation in FORMULATIONS:
        loss_and_gradient(x, m, formulation, ridge=0.1)
        assert torch.equal(x, before[0]) and torch.equal(m, before[1])


@pytest.mark.parametrize("formulation", list(FORMULATIONS))
def test_a_given_product_gives_the_loss_and_gradient_of_one_computed(formulation):
    m = random_matrix(4, batch_shape=(2,), dtype=torch.float64)
    x = random_matrix(4, seed=9, batch_shape=(2,), dtype=torch.float64)
    expected = loss_and_gradient(x, m, formulation, ridge=0.1)
    given = loss_and_gradient(
        x, m, formulation, ridge=0.1, product=inverse_product(x, m, formulation)
    )
    assert all(torch.equal(a, b) for a, b in zip(given, expected, strict=True))
    with pytest.raises(InvalidOptionError, match="one of the two"):
        loss_and_gradient(x, m, "left", product=x @ m, columns=slice(0, 2))


@pytest.mark.parametrize("formulation", list(FORMULATIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
def test_the_loss_and_gradient_at_zero_are_the_products_bit_for_bit(formulation, dtype):
    # k from 1 to 67 (odd, even, squares and not: the root of k as the norm takes it) and
    # 1000; a batch, one matrix, and a rectangular M for the two sides that allow it
    shapes = [(2, k, k) for k in range(1, 68)] + [(1000, 1000)]
    if formulation != "symmetric":
        shapes += [(3, 5, 7), (7, 5)]
    for shape in shapes:
        m = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(len(shape)))
        m[(0,) * m.ndim] = 0  # a zero entry: its gradient is -0 either way
        zero = torch.zeros(inverse_shape(m.shape), dtype=dtype)
        expected = loss_and_gradient(zero, m, formulation, ridge=0.5)
        given = loss_and_gradient_at_zero(m, formulation)
        assert given[1].is_contiguous() and given[0].shape == m.shape[:-2]
        assert all(torch.equal(a, b) for a, b in zip(given, expected, strict=True)), shape


@pytest.mark.parametrize("name", list(FORMULATIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
@pytest.mark.parametrize("with_target", [False, True])
def test_wide_residual_is_the_whole_products_in_the_wide_dtype(name, dtype, with_target):
    # k = 7: blocks of 2 columns (or rows), the last of 1, each with its part of I's diagonal
    gen = torch.Generator().manual_seed(3)
    matrix = torch.randn(2, 7, 7, generator=gen, dtype=dtype) + 3 * torch.eye(7, dtype=dtype)
    inverse = torch.linalg.inv(matrix) + 1e-3 * torch.randn(2, 7, 7, generator=gen, dtype=dtype)
    target = torch.randn(2, 7, 7, generator=gen, dtype=dtype) if with_target else None
    wide = torch.complex128 if dtype.is_complex else torch.float64
    expected = relative_residual(
        FORMULATIONS[name].product(inverse.to(wide), matrix.to(wide)),
        None if target is None else target.to(wide),
    )
    got = wide_residual(inverse, matrix, name, target)
    assert got.dtype == torch.float64 and got.shape == (2,)
    torch.testing.assert_close(got, expected.double(), rtol=1e-14, atol=0)
