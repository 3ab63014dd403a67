r"""The math of inversion by gradient descent, as pure functions on tensors.

For an approximate inverse :math:`X` (``(..., n, m)``) of :math:`M` (``(..., m, n)``; square
in the post) the estimate of the identity is one of three formulations:

.. math::
    E_\text{left} = X M, \qquad E_\text{right} = M X, \qquad
    E_\text{symmetric} = \tfrac12 (X M + M X),

and the loss of each matrix is the mean squared error to the identity over the :math:`k^2`
entries of the estimate (:math:`k = n` for ``left``, :math:`m` for ``right``),
:math:`L(X) = \lVert E - I \rVert_F^2 / k^2`, plus :math:`\lambda \lVert X \rVert_F^2` with a
ridge (Tikhonov) term. A batch is a set of independent problems:
its objective is the *sum* of the per-matrix losses, so every matrix follows the trajectory it
would follow alone. The gradient has a closed form (two matrix products, four for symmetric):

.. math::
    \nabla L_\text{left} = \tfrac{2}{k^2} (XM - I) M^\top, \quad
    \nabla L_\text{right} = \tfrac{2}{k^2} M^\top (MX - I), \quad
    \nabla L_\text{symmetric} = \tfrac{1}{k^2} \big(R M^\top + M^\top R\big),\ R = E - I,

plus :math:`2 \lambda X` with a ridge.
"""

import math
from typing import Literal, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "FORMULATIONS",
    "Formulation",
    "identity_estimate",
    "identity_error",
    "identity_mse",
    "identity_sse",
    "relative_residual",
    "loss_and_gradient",
    "estimate_size",
    "inverse_loss",
    "approx_shape",
    "scaled_product",
]

Formulation = Literal["left", "right", "symmetric"]
FORMULATIONS: Tuple[Formulation, ...] = ("left", "right", "symmetric")


def estimate_size(matrix_shape: Sequence[int], formulation: Formulation = "left") -> int:
    """``k``, the order of the estimate: M's columns for ``left``, its rows for ``right``.

    Example:
        >>> estimate_size((5, 3), "left"), estimate_size((5, 3), "right")
        (3, 5)
    """
    return matrix_shape[-2] if formulation == "right" else matrix_shape[-1]


def approx_shape(matrix_shape: Sequence[int]) -> Tuple[int, ...]:
    """The shape of X for an M of shape ``(..., m, n)``: ``(..., n, m)``.

    Example:
        >>> approx_shape((2, 5, 3))
        (2, 3, 5)
    """
    return (*matrix_shape[:-2], matrix_shape[-1], matrix_shape[-2])


def identity_estimate(
    approx: Tensor,  # shape: (..., n, m)
    matrix: Tensor,  # shape: (..., m, n)
    formulation: Formulation = "left",
) -> Tensor:  # shape: (..., k, k)
    """The estimate of the identity that ``approx`` gives for ``matrix``; differentiable in both.

    Example:
        >>> m = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
        >>> identity_estimate(torch.linalg.inv(m), m)
        tensor([[1., 0.],
                [0., 1.]])
    """
    if formulation == "left":
        return approx @ matrix
    if formulation == "right":
        return matrix @ approx
    return (approx @ matrix + matrix @ approx) / 2


def identity_error(estimate: Tensor) -> Tensor:  # shape: (..., n, n) -> (..., n, n)
    """``estimate - I``, the identity broadcast over the leading dimensions.

    Example:
        >>> identity_error(torch.eye(2))
        tensor([[0., 0.],
                [0., 0.]])
    """
    n = estimate.shape[-1]
    return estimate - torch.eye(n, dtype=estimate.dtype, device=estimate.device)


def identity_sse(estimate: Tensor) -> Tuple[Tensor, int]:  # shape: (..., n, n) -> ((), count)
    """Sum of squared errors of ``estimate`` to the identity, and the number of entries summed.

    Example:
        >>> identity_sse(2 * torch.eye(2))
        (tensor(2.), 4)
    """
    return identity_error(estimate).square().sum(), estimate.numel()


def identity_mse(
    estimate: Tensor,  # shape: (..., n, n)
    *,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:  # shape: () for "mean", (...) for "none"
    r"""Mean squared error of ``estimate`` to the identity.

    ``reduction="none"`` gives one value per matrix, :math:`\lVert E - I \rVert_F^2 / n^2`;
    ``"mean"`` the mean over all entries of the batch.

    Example:
        >>> identity_mse(2 * torch.eye(2))
        tensor(0.5000)
    """
    if reduction == "none":
        return identity_error(estimate).square().mean(dim=(-2, -1))
    sse, count = identity_sse(estimate)
    return sse / count


def relative_residual(
    estimate: Tensor,  # shape: (..., k, k)
    target: Optional[Tensor] = None,  # shape: (..., k, k)
) -> Tensor:  # shape: (...)
    r"""Relative residual :math:`\lVert E - T \rVert_F / \sqrt{k}`, one value per matrix.

    ``T`` is the identity by default: the residual is then the root mean square of the error's
    singular values, 1 for ``E = 0`` and 0 at the inverse. For a rank-deficient M pass the
    projector that the estimate tends to (see :func:`gdinv_modules.rank.estimate_target`).

    Example:
        >>> relative_residual(torch.zeros(3, 3))
        tensor(1.)
    """
    k = estimate.shape[-1]
    error = identity_error(estimate) if target is None else estimate - target
    return torch.linalg.matrix_norm(error) / math.sqrt(k)


def inverse_loss(
    error: Tensor,  # shape: (..., k, k), E - I
    approx: Tensor,  # shape: (..., n, m)
    ridge: float = 0.0,
) -> Tensor:  # shape: (...)
    r"""The training objective per matrix, :math:`\lVert E - I\rVert_F^2/k^2 + \lambda
    \lVert X\rVert_F^2`, from the error ``E - I``.

    Example:
        >>> inverse_loss(identity_error(torch.zeros(2, 2)), torch.ones(2, 2), ridge=0.25)
        tensor(1.5000)
    """
    k = error.shape[-1]
    # One pass over the error and no k x k temporary: the norm, squared, over k^2.
    loss = (torch.linalg.vector_norm(error, dim=(-2, -1)) / k).square()
    if ridge:
        loss = loss + ridge * approx.square().sum(dim=(-2, -1))
    return loss


def loss_and_gradient(
    approx: Tensor,  # shape: (..., n, m)
    matrix: Tensor,  # shape: (..., m, n)
    formulation: Formulation = "left",
    ridge: float = 0.0,
) -> Tuple[Tensor, Tensor]:  # shapes: (...), (..., n, m)
    """The per-matrix loss at ``approx`` and the closed-form gradient of the summed loss.

    Equal to what autograd gives for ``identity_mse(estimate, reduction="none").sum()`` (plus
    ``ridge * ||X||^2`` per matrix), at the cost of the two matrix products the math needs
    (four for ``"symmetric"``).

    Example:
        >>> m = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
        >>> loss, grad = loss_and_gradient(torch.zeros(2, 2), m)
        >>> loss
        tensor(0.5000)
        >>> grad
        tensor([[-1.,  0.],
                [ 0., -2.]])
    """
    error = identity_estimate(approx, matrix, formulation)
    error.diagonal(dim1=-2, dim2=-1).sub_(1)  # E - I in place: the estimate is ours
    k = error.shape[-1]
    scale = 2.0 / (k * k)
    loss = inverse_loss(error, approx, ridge)
    matrix_t = matrix.mT
    if formulation == "left":
        gradient = scaled_product(error, matrix_t, scale)
    elif formulation == "right":
        gradient = scaled_product(matrix_t, error, scale)
    else:
        gradient = scaled_product(error, matrix_t, scale / 2)
        gradient += scaled_product(matrix_t, error, scale / 2)
    if ridge:
        gradient += (2 * ridge) * approx
    return loss, gradient


def scaled_product(
    left: Tensor,  # shape: (..., a, b)
    right: Tensor,  # shape: (..., b, c)
    alpha: float,
) -> Tensor:  # shape: (..., a, c)
    """``alpha * (left @ right)``, the scale applied by the matrix product itself (BLAS's
    alpha), so no extra pass over the result; equal bit for bit when ``alpha`` is a power of 2.

    Example:
        >>> scaled_product(torch.eye(2), torch.ones(2, 3), 0.5)
        tensor([[0.5000, 0.5000, 0.5000],
                [0.5000, 0.5000, 0.5000]])
    """
    unused = left.new_empty(())  # beta=0: the "input" term is ignored, never read
    if left.ndim == 2 and right.ndim == 2:
        return torch.addmm(unused, left, right, beta=0, alpha=alpha)
    batch = torch.broadcast_shapes(left.shape[:-2], right.shape[:-2])
    if left.shape[:-2] != batch or right.shape[:-2] != batch:
        return (left @ right).mul_(alpha)  # broadcast batches: a flat view would copy
    product = torch.baddbmm(
        unused,
        left.reshape(-1, *left.shape[-2:]),
        right.reshape(-1, *right.shape[-2:]),
        beta=0,
        alpha=alpha,
    )
    return product.reshape(*batch, left.shape[-2], right.shape[-1])
