r"""The math of inversion by gradient descent, as pure functions on tensors.

For an approximate inverse :math:`X` of :math:`M` (both ``(..., n, n)``) the estimate of the
identity is one of three formulations:

.. math::
    E_\text{left} = X M, \qquad E_\text{right} = M X, \qquad
    E_\text{symmetric} = \tfrac12 (X M + M X),

and the loss of each matrix is the mean squared error to the identity over its :math:`n^2`
entries, :math:`L(X) = \lVert E - I \rVert_F^2 / n^2`. A batch is a set of independent problems:
its objective is the *sum* of the per-matrix losses, so every matrix follows the trajectory it
would follow alone. The gradient has a closed form (two matrix products, four for symmetric):

.. math::
    \nabla L_\text{left} = \tfrac{2}{n^2} (XM - I) M^\top, \quad
    \nabla L_\text{right} = \tfrac{2}{n^2} M^\top (MX - I), \quad
    \nabla L_\text{symmetric} = \tfrac{1}{n^2} \big(R M^\top + M^\top R\big),\ R = E - I.
"""

import math
from typing import Literal, Tuple

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
]

Formulation = Literal["left", "right", "symmetric"]
FORMULATIONS: Tuple[str, ...] = ("left", "right", "symmetric")


def identity_estimate(
    approx: Tensor,  # shape: (..., n, n)
    matrix: Tensor,  # shape: (..., n, n)
    formulation: Formulation = "left",
) -> Tensor:  # shape: (..., n, n)
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


def relative_residual(estimate: Tensor) -> Tensor:  # shape: (..., n, n) -> (...)
    r"""Relative residual :math:`\lVert E - I \rVert_F / \sqrt{n}`, one value per matrix.

    It is the root mean square of the error's singular values: 1 for ``E = 0``, 0 at the inverse.

    Example:
        >>> relative_residual(torch.zeros(3, 3))
        tensor(1.)
    """
    n = estimate.shape[-1]
    return torch.linalg.matrix_norm(identity_error(estimate)) / math.sqrt(n)


def loss_and_gradient(
    approx: Tensor,  # shape: (..., n, n)
    matrix: Tensor,  # shape: (..., n, n)
    formulation: Formulation = "left",
) -> Tuple[Tensor, Tensor]:  # shapes: (...), (..., n, n)
    """The per-matrix loss at ``approx`` and the closed-form gradient of the summed loss.

    Equal to what autograd gives for ``identity_mse(estimate, reduction="none").sum()``, at the
    cost of the two matrix products the math needs (four for ``"symmetric"``).

    Example:
        >>> m = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
        >>> loss, grad = loss_and_gradient(torch.zeros(2, 2), m)
        >>> loss
        tensor(0.5000)
        >>> grad
        tensor([[-1.,  0.],
                [ 0., -2.]])
    """
    n = matrix.shape[-1]
    scale = 2.0 / (n * n)
    error = identity_error(identity_estimate(approx, matrix, formulation))
    loss = error.square().mean(dim=(-2, -1))
    matrix_t = matrix.mT
    if formulation == "left":
        gradient = (error * scale) @ matrix_t
    elif formulation == "right":
        gradient = matrix_t @ (error * scale)
    else:
        half = error * (scale / 2)
        gradient = half @ matrix_t + matrix_t @ half
    return loss, gradient
