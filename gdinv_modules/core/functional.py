r"""The math of inversion by gradient descent, as pure functions on tensors.

For an approximate inverse :math:`X` (``(..., n, m)``) of :math:`M` (``(..., m, n)``; square
in the post) the product :math:`E`, which training drives to the identity, is one of three
formulations:

.. math::
    E_\text{left} = X M, \qquad E_\text{right} = M X, \qquad
    E_\text{symmetric} = \tfrac12 (X M + M X),

and the loss of each matrix is the mean squared error to the identity over the :math:`k^2`
entries of the product, its order :math:`k` (:math:`k = n` for ``left``, :math:`m` for ``right``),
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
from typing import Literal, Optional, Sequence, Tuple, get_args

import torch
from torch import Tensor

from gdinv_modules.core.deprecation import renamed_attributes
from gdinv_modules.core.errors import InvalidOptionError

__all__ = [
    "FORMULATIONS",
    "Formulation",
    "inverse_product",
    "identity_error",
    "identity_mse",
    "identity_sse",
    "relative_residual",
    "loss_and_gradient",
    "product_order",
    "inverse_loss",
    "inverse_shape",
    "scaled_product",
    "default_tol",
    "wide_dtype",
]

Formulation = Literal["left", "right", "symmetric"]
FORMULATIONS: Tuple[Formulation, ...] = get_args(Formulation)


def default_tol(dtype: torch.dtype) -> float:
    """The tolerance on the relative residual that a dtype can reach: 1e-10 for float64 and
    complex128, 1e-5 for float32 and complex64, 1e-2 for the half types.

    Example:
        >>> default_tol(torch.float64), default_tol(torch.complex64)
        (1e-10, 1e-05)
    """
    if dtype in (torch.float64, torch.complex128):
        return 1e-10
    if dtype in (torch.float32, torch.complex64):
        return 1e-5
    return 1e-2


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to accumulate a residual in: float64, or complex128 for complex dtypes.

    Example:
        >>> wide_dtype(torch.float32), wide_dtype(torch.complex64)
        (torch.float64, torch.complex128)
    """
    return torch.complex128 if dtype.is_complex else torch.float64


def product_order(matrix_shape: Sequence[int], formulation: Formulation = "left") -> int:
    """``k``, the order of the product E: M's columns for ``left``, its rows for ``right``.

    Example:
        >>> product_order((5, 3), "left"), product_order((5, 3), "right")
        (3, 5)
    """
    return matrix_shape[-2] if formulation == "right" else matrix_shape[-1]


def inverse_shape(matrix_shape: Sequence[int]) -> Tuple[int, ...]:
    """The shape of X for an M of shape ``(..., m, n)``: ``(..., n, m)``.

    Example:
        >>> inverse_shape((2, 5, 3))
        (2, 3, 5)
    """
    return (*matrix_shape[:-2], matrix_shape[-1], matrix_shape[-2])


def inverse_product(
    inverse: Tensor,  # shape: (..., n, m)
    matrix: Tensor,  # shape: (..., m, n)
    formulation: Formulation = "left",
) -> Tensor:  # shape: (..., k, k)
    """The product E of X (``inverse``) and M (``matrix``) that training drives to the identity;
    differentiable in both.

    Example:
        >>> m = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
        >>> inverse_product(torch.linalg.inv(m), m)
        tensor([[1., 0.],
                [0., 1.]])
    """
    if formulation == "left":
        return inverse @ matrix
    if formulation == "right":
        return matrix @ inverse
    return (inverse @ matrix + matrix @ inverse) / 2


def identity_error(product: Tensor) -> Tensor:  # shape: (..., k, k) -> (..., k, k)
    """``E - I``, the identity broadcast over the leading dimensions.

    Example:
        >>> identity_error(torch.eye(2))
        tensor([[0., 0.],
                [0., 0.]])
    """
    k = product.shape[-1]
    return product - torch.eye(k, dtype=product.dtype, device=product.device)


def identity_sse(product: Tensor) -> Tuple[Tensor, int]:  # shape: (..., k, k) -> ((), count)
    """Sum of squared errors of the product E to the identity, and the number of entries summed.

    Example:
        >>> identity_sse(2 * torch.eye(2))
        (tensor(2.), 4)
    """
    return identity_error(product).abs().square().sum(), product.numel()


def identity_mse(
    product: Tensor,  # shape: (..., k, k)
    *,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:  # shape: () for "mean", (...) for "none"
    r"""Mean squared error of the product E to the identity.

    ``reduction="none"`` gives one value per matrix, :math:`\lVert E - I \rVert_F^2 / k^2`;
    ``"mean"`` the mean over all entries of the batch.

    Example:
        >>> identity_mse(2 * torch.eye(2))
        tensor(0.5000)
    """
    if reduction == "none":
        return identity_error(product).abs().square().mean(dim=(-2, -1))
    sse, count = identity_sse(product)
    return sse / count


def relative_residual(
    product: Tensor,  # shape: (..., k, k)
    target: Optional[Tensor] = None,  # shape: (..., k, k)
) -> Tensor:  # shape: (...)
    r"""Relative residual :math:`\lVert E - T \rVert_F / \sqrt{k}`, one value per matrix.

    ``T`` is the identity by default: the residual is then the root mean square of the error's
    singular values, 1 for ``E = 0`` and 0 at the inverse. For a rank-deficient M pass the
    projector that the product tends to (see :func:`gdinv_modules.core.rank.product_target`).

    Example:
        >>> relative_residual(torch.zeros(3, 3))
        tensor(1.)
    """
    k = product.shape[-1]
    error = identity_error(product) if target is None else product - target
    return torch.linalg.matrix_norm(error) / math.sqrt(k)


def inverse_loss(
    error: Tensor,  # shape: (..., k, k), E - I
    inverse: Tensor,  # shape: (..., n, m)
    ridge: float = 0.0,
    *,
    order: Optional[int] = None,
) -> Tensor:  # shape: (...)
    r"""The loss per matrix, the objective SGD minimises, :math:`\lVert E - I\rVert_F^2/k^2 +
    \lambda \lVert X\rVert_F^2`, from the error ``E - I`` (``order``: k where the error holds
    only some of E's columns).

    Example:
        >>> inverse_loss(identity_error(torch.zeros(2, 2)), torch.ones(2, 2), ridge=0.25)
        tensor(1.5000)
    """
    k = error.shape[-1] if order is None else order
    # One pass over the error and no k x k temporary: the norm, squared, over k^2.
    loss = (torch.linalg.vector_norm(error, dim=(-2, -1)) / k).square()
    if ridge:
        loss = loss + ridge * inverse.abs().square().sum(dim=(-2, -1))
    return loss


def loss_and_gradient(
    inverse: Tensor,  # shape: (..., n, m)
    matrix: Tensor,  # shape: (..., m, n)
    formulation: Formulation = "left",
    ridge: float = 0.0,
    *,
    columns: Optional[slice] = None,
) -> Tuple[Tensor, Tensor]:  # shapes: (...), (..., n, m)
    """The per-matrix loss at X and the closed-form gradient of the summed loss.

    Equal to what autograd gives for ``identity_mse(E, reduction="none").sum()`` (plus
    ``ridge * ||X||^2`` per matrix), at the cost of the two matrix products the math needs
    (four for ``"symmetric"``).

    ``columns`` (``left``: of E; ``right``: its rows) takes the part of the loss and gradient
    that those columns of E contribute, ``||X M[:, j] - e_j||^2 / k^2`` summed over them: a
    column split sums these parts over the ranks. The ridge term is added whole.

    Example:
        >>> m = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
        >>> loss, grad = loss_and_gradient(torch.zeros(2, 2), m)
        >>> loss
        tensor(0.5000)
        >>> grad
        tensor([[-1.,  0.],
                [ 0., -2.]])
        >>> part, _ = loss_and_gradient(torch.zeros(2, 2), m, columns=slice(1, 2))
        >>> part
        tensor(0.2500)
    """
    k = product_order(matrix.shape, formulation)
    offset = 0
    if columns is not None:
        if formulation == "symmetric":
            raise InvalidOptionError("a column split needs formulation 'left' or 'right'")
        offset = columns.start or 0
        matrix = matrix[..., :, columns] if formulation == "left" else matrix[..., columns, :]
        offset = -offset if formulation == "left" else offset
    error = inverse_product(inverse, matrix, formulation)
    error.diagonal(offset, dim1=-2, dim2=-1).sub_(1)  # E - I in place: the product is ours
    scale = 2.0 / (k * k)
    loss = inverse_loss(error, inverse, ridge, order=k)
    matrix_t = matrix.mH  # the conjugate transpose: M^T for real M
    if formulation == "left":
        gradient = scaled_product(error, matrix_t, scale)
    elif formulation == "right":
        gradient = scaled_product(matrix_t, error, scale)
    else:
        gradient = scaled_product(error, matrix_t, scale / 2)
        gradient += scaled_product(matrix_t, error, scale / 2)
    if ridge:
        gradient += (2 * ridge) * inverse
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


__getattr__ = renamed_attributes(
    __name__,
    {
        "identity_estimate": "inverse_product",
        "estimate_size": "product_order",
        "approx_shape": "inverse_shape",
    },
    globals(),
)
