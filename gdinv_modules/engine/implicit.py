r"""``inverse_of``: a given inverse X as a differentiable function of M, at every order.

:math:`d(M^{-1}) = -M^{-1}\,dM\,M^{-1}`, so the inverse needs no unrolled iterations to be
differentiated: given X (from descent, refinement or a tracker), the backward of
:math:`X(M)` is :math:`\nabla_M = -X^H G X^H` and its forward derivative
:math:`\dot X = -X \dot M X`, both as exact as X is. The backward is written with
:func:`inverse_of` itself, so a double backward (a Hessian-vector product, ``gradgradcheck``)
differentiates X again by the same rule; ``torch.func``'s ``grad``, ``jacrev``, ``jvp`` and
``vmap`` apply to it too.
"""

from typing import Any, Tuple

import torch
from torch import Tensor

__all__ = ["inverse_of"]


class _InverseOf(torch.autograd.Function):
    """X as a function of M, X given: the implicit derivative, at every order."""

    generate_vmap_rule = True

    @staticmethod
    def forward(matrix: Tensor, inverse: Tensor) -> Tensor:  # (..., n, n), (..., n, n)
        return inverse.clone()  # its own memory: a later change of X leaves this graph alone

    @staticmethod
    def setup_context(ctx: Any, inputs: Tuple[Tensor, Tensor], output: Tensor) -> None:
        matrix, _ = inputs
        ctx.save_for_backward(matrix, output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None]:
        matrix, inverse = ctx.saved_tensors
        # X again as a function of M, so that a double backward sees its derivative too
        inverse_h = _InverseOf.apply(matrix, inverse.detach()).mH
        return -(inverse_h @ grad @ inverse_h), None

    @staticmethod
    def jvp(ctx: Any, matrix_tangent: Tensor, inverse_tangent: Any) -> Tensor:
        (inverse,) = ctx.saved_tensors
        return -(inverse @ matrix_tangent @ inverse)


def inverse_of(
    matrix: Tensor,  # shape: (..., n, n), M
    inverse: Tensor,  # shape: (..., n, n), X with X M = I to the precision wanted
) -> Tensor:  # shape: (..., n, n)
    r"""``inverse`` (X), returned as a differentiable function of ``matrix`` (M) with the
    implicit derivative of :math:`M^{-1}` at every order; ``inverse`` itself gets no gradient.

    Example:
        >>> m = torch.tensor([[4.0, 1.0], [2.0, 3.0]], dtype=torch.float64, requires_grad=True)
        >>> x = inverse_of(m, torch.linalg.inv(m.detach()))
        >>> x.trace().backward()
        >>> expected = torch.autograd.grad(torch.linalg.inv(m).trace(), m)[0]
        >>> torch.allclose(m.grad, expected)
        True
    """
    return _InverseOf.apply(matrix, inverse.detach())
