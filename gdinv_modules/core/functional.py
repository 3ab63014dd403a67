r"""The math of inversion by gradient descent, as pure functions on tensors.

For an approximate inverse :math:`X` (``(..., n, m)``) of :math:`M` (``(..., m, n)``; square
in the post) the product :math:`E`, which training drives to the identity, is :math:`XM` (the
formulation ``"left"``), :math:`MX` (``"right"``) or their average (``"symmetric"``), of order
k (:mod:`gdinv_modules.core.formulation`). The loss of each matrix is the mean squared error
to the identity over the :math:`k^2` entries of the product,
:math:`L(X) = \lVert E - I \rVert_F^2 / k^2`, plus :math:`\lambda \lVert X \rVert_F^2` with a
ridge (Tikhonov) term. A batch is a set of independent problems: its objective is the *sum*
of the per-matrix losses, so every matrix follows the trajectory it would follow alone. The
gradient has a closed form, :math:`\tfrac{2}{k^2} \mathcal{A}^*(E - I)`, e.g.
:math:`\tfrac{2}{k^2} (XM - I) M^H` for ``left`` (two matrix products), plus
:math:`2 \lambda X` with a ridge.

The words: *the error* is the matrix :math:`E - I`; *the residual* is the number
:math:`\lVert E - I\rVert_F / \sqrt{k}` per matrix, what ``tol`` bounds.
"""

import math
from contextlib import AbstractContextManager
from typing import Iterator, Literal, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from gdinv_modules.core.errors import InvalidOptionError
from gdinv_modules.core.formulation import LEFT, SYMMETRIC, Formulation, as_formulation

__all__ = [
    "Tol",
    "default_tol",
    "resolve_tol",
    "wide_dtype",
    "inverse_shape",
    "inverse_product",
    "identity_error",
    "identity_sse",
    "identity_mse",
    "relative_residual",
    "wide_residual",
    "WIDE_BLOCKS",
    "blocks",
    "product_into",
    "inverse_loss",
    "loss_and_gradient",
    "loss_and_gradient_at_zero",
    "squared_norm",
    "autocast_off",
]

Tol = Union[float, Literal["auto"], None]

WIDE_BLOCKS = 4  # a product in the wide dtype is taken in this many blocks of rows or columns


def blocks(size: int) -> Iterator[slice]:
    """The :data:`WIDE_BLOCKS` slices that cover ``range(size)``, in order (fewer where
    ``size`` is smaller): the rows or columns a product takes at a time.

    Example:
        >>> list(blocks(6))
        [slice(0, 2, None), slice(2, 4, None), slice(4, 6, None)]
    """
    step = -(-size // WIDE_BLOCKS)
    return (slice(first, first + step) for first in range(0, size, step))


def product_into(
    out: Tensor, left: Tensor, right: Tensor
) -> Tensor:  # (..., a, b) <- (..., a, c) @ (..., c, b); out contiguous
    """``left @ right`` written into ``out`` in place (BLAS's beta = 0), with no batch
    broadcast: no new matrix, whose page faults cost a CPU product of small matrices 3 to 4
    times its flops, and not matmul's ``out=``, which torch.func's wrapped tensors refuse
    (``invert()`` runs inside ``torch.func.grad``).

    Example:
        >>> product_into(torch.empty(2, 2), torch.eye(2), torch.full((2, 2), 3.0))
        tensor([[3., 3.],
                [3., 3.]])
    """
    if out.ndim == 2:
        return out.addmm_(left, right, beta=0)
    flat = out.view(-1, *out.shape[-2:])
    flat.baddbmm_(left.reshape(-1, *left.shape[-2:]), right.reshape(-1, *right.shape[-2:]), beta=0)
    return out


def default_tol(dtype: torch.dtype) -> float:
    """The tolerance on the residual that a dtype can reach: 1e-10 for float64 and
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


def resolve_tol(tol: Tol, dtype: torch.dtype) -> Optional[float]:
    """``tol`` as a number: ``"auto"`` is the dtype's :func:`default_tol`; ``None`` stays
    ``None`` (no stop at a tolerance).

    Example:
        >>> resolve_tol("auto", torch.float32), resolve_tol(1e-3, torch.float32)
        (1e-05, 0.001)
    """
    if tol == "auto":
        return default_tol(dtype)
    if tol is None:
        return None
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0 < tol < math.inf):
        raise InvalidOptionError(f"tol must be a finite number > 0, 'auto' or None, got {tol!r}")
    return float(tol)


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to accumulate an error in: float64, or complex128 for complex dtypes.

    Example:
        >>> wide_dtype(torch.float32), wide_dtype(torch.complex64)
        (torch.float64, torch.complex128)
    """
    return torch.complex128 if dtype.is_complex else torch.float64


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
    formulation: Union[str, Formulation] = "left",
) -> Tensor:  # shape: (..., k, k)
    """The product E of X (``inverse``) and M (``matrix``); differentiable in both.

    Example:
        >>> m = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
        >>> inverse_product(torch.linalg.inv(m), m)
        tensor([[1., 0.],
                [0., 1.]])
    """
    return as_formulation(formulation).product(inverse, matrix)


def identity_error(product: Tensor) -> Tensor:  # shape: (..., k, k) -> (..., k, k)
    """The error ``E - I``, the identity broadcast over the leading dimensions.

    Example:
        >>> identity_error(torch.eye(2))
        tensor([[0., 0.],
                [0., 0.]])
    """
    error = product.clone()  # one new tensor: no identity of its own
    error.diagonal(dim1=-2, dim2=-1).sub_(1)
    return error


def identity_sse(product: Tensor) -> Tuple[Tensor, int]:  # shape: (..., k, k) -> ((), count)
    """Sum of squared errors of the product E to the identity, and the number of entries summed.

    Example:
        >>> identity_sse(2 * torch.eye(2))
        (tensor(2.), 4)
    """
    error = identity_error(product).reshape(-1)  # E - I, the one copy: a dot product sums
    return torch.vdot(error, error).real, product.numel()  # its squares without another


def identity_mse(
    product: Tensor,  # shape: (..., k, k)
    *,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:  # shape: () for "mean", (...) for "none"
    r"""Mean squared error of the product E to the identity: the metric.

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
    r"""The residual :math:`\lVert E - T \rVert_F / \sqrt{k}`, one value per matrix.

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


def wide_residual(
    inverse: Tensor,  # shape: (..., n, m)
    matrix: Tensor,  # shape: (..., m, n)
    formulation: Union[str, Formulation] = "left",
    target: Optional[Tensor] = None,  # shape: (..., k, k)
) -> Tensor:  # shape: (...), float64
    r""":func:`relative_residual` of the product, accumulated in the wide dtype (float64, or
    complex128), :data:`WIDE_BLOCKS` blocks of E's columns at a time (its rows for ``right``):
    beside X's wide copy only a block of M and of E are alive, not the whole of both
    (``symmetric``: its columns :math:`(XM_{:,c} + MX_{:,c})/2`, the second product by
    blocks of M's rows).

    Example:
        >>> m = torch.tensor([[4.0, 1.0], [2.0, 3.0]])
        >>> wide_residual(torch.linalg.inv(m), m).item() < 1e-7
        True
    """
    form = as_formulation(formulation)
    side = LEFT if form is SYMMETRIC else form  # whose blocks E is taken in
    wide = wide_dtype(inverse.dtype)
    x = inverse.to(wide)
    k = form.order(matrix.shape)
    total = torch.zeros(matrix.shape[:-2], dtype=torch.float64, device=matrix.device)
    for columns in blocks(k):
        part = side.product(x, side.columns_of(matrix, columns).to(wide))
        if form is SYMMETRIC:
            for rows in blocks(k):
                part[..., rows, :] += matrix[..., rows, :].to(wide) @ x[..., columns]
            part /= 2
        if target is None:
            part.diagonal(side.identity_offset(columns), dim1=-2, dim2=-1).sub_(1)
        else:
            part -= side.columns_of(target, columns).to(wide)
        total += squared_norm(part)
        del part  # before the next block's: one block of E at a time
    return total.sqrt() / math.sqrt(k)


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
    formulation: Union[str, Formulation] = "left",
    ridge: float = 0.0,
    *,
    columns: Optional[slice] = None,
    product: Optional[Tensor] = None,  # shape: (..., k, k), E at X, if known (overwritten)
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
    form = as_formulation(formulation)
    k = form.order(matrix.shape)
    offset = 0
    if columns is not None:
        matrix = form.columns_of(matrix, columns)
        offset = form.identity_offset(columns)
    if product is not None and columns is not None:
        raise InvalidOptionError("product is E whole, columns a part of it: pass one of the two")
    error = form.product(inverse, matrix) if product is None else product
    error.diagonal(offset, dim1=-2, dim2=-1).sub_(1)  # E - I in place: the product is ours
    loss = inverse_loss(error, inverse, ridge, order=k)
    gradient = form.gradient(error, matrix, 2.0 / (k * k))
    if ridge:
        gradient += (2 * ridge) * inverse
    return loss, gradient


def loss_and_gradient_at_zero(
    matrix: Tensor,  # shape: (..., m, n)
    formulation: Union[str, Formulation] = "left",
) -> Tuple[Tensor, Tensor]:  # shapes: (...), (..., n, m)
    r""":func:`loss_and_gradient` at X = 0, with no matrix product: E = 0, so the loss is
    :math:`\lVert I\rVert_F^2 / k^2 = 1/k` per matrix and the gradient
    :math:`-\tfrac{2}{k^2} M^H` for every formulation (a ridge adds nothing at 0), bit for bit
    what the products give.

    Example:
        >>> loss, grad = loss_and_gradient_at_zero(torch.tensor([[2.0, 0.0], [1.0, 4.0]]))
        >>> loss
        tensor(0.5000)
        >>> grad
        tensor([[-1.0000, -0.5000],
                [-0.0000, -2.0000]])
    """
    k = as_formulation(formulation).order(matrix.shape)
    # ||-I||_F as inverse_loss's norm takes it (its root of k, not always math.sqrt's)
    norm = torch.linalg.vector_norm(matrix.new_ones(k, dtype=matrix.dtype.to_real()))
    loss = (norm / k).square().expand(matrix.shape[:-2]).clone()
    gradient = matrix.new_empty(inverse_shape(matrix.shape)).copy_(matrix.mH)
    return loss, gradient.mul_(-2.0 / (k * k))


def squared_norm(tensor: Tensor) -> Tensor:  # shape: (..., a, b) -> (...), float64
    """Squared Frobenius norms, summed in float64 (the tuner's Rayleigh quotients need them
    accurate to well below float32's resolution).

    Example:
        >>> squared_norm(torch.tensor([[3.0, 4.0]])).item()
        25.0
    """
    wide = torch.complex128 if tensor.is_complex() else torch.float64
    # the norm converts entry by entry: no float64 copy of the tensor
    return torch.linalg.vector_norm(tensor, dim=(-2, -1), dtype=wide).square()


def autocast_off(tensor: Tensor) -> AbstractContextManager:
    """A context in which autocast is off for ``tensor``'s device: the steps run in M's dtype
    whatever autocast surrounds them (a step in bfloat16 stops far from an inverse).

    Example:
        >>> with torch.autocast("cpu", dtype=torch.bfloat16), autocast_off(torch.eye(2)):
        ...     (torch.eye(2) @ torch.eye(2)).dtype
        torch.float32
    """
    return torch.autocast(device_type=tensor.device.type, enabled=False)
