r"""The formulation: which product of X and M training drives to the identity.

One object per formulation owns everything that depends on it:

======================  =====================  =====================  ============================
                        ``left`` (the post's)  ``right``              ``symmetric``
======================  =====================  =====================  ============================
the product E           :math:`XM`             :math:`MX`             :math:`(XM + MX)/2`
its order k             n (M's columns)        m (M's rows)           n
the gradient            :math:`c(E - I)M^H`    :math:`cM^H(E - I)`    both halves, :math:`c/2` each
the normal operator     :math:`VMM^H`          :math:`M^HMV`          :math:`A^*A(V)`
the projector (rank r)  onto M's row space     onto M's column space  onto M's row space
needs a square M        no                     no                     yes
a column split          of E's columns         of E's rows            none
======================  =====================  =====================  ============================

with :math:`c = 2/k^2`. For ``left`` and ``right`` the operator :math:`X \mapsto E` has M's
singular values; for ``symmetric`` it has its own (:meth:`Formulation.operator_singular_values`).
Options take the name (``formulation="left"``); :func:`as_formulation` turns it into the object.
"""

from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from gdinv_modules.core.decomposition import wide_svdvals
from gdinv_modules.core.errors import InvalidOptionError

__all__ = [
    "Formulation",
    "FormulationName",
    "FORMULATIONS",
    "LEFT",
    "RIGHT",
    "SYMMETRIC",
    "as_formulation",
]

FormulationName = Literal["left", "right", "symmetric"]


def _scaled_product(
    left: Tensor, right: Tensor, alpha: float, into: Optional[Tensor] = None
) -> Tensor:
    """``alpha * (left @ right)`` with the scale applied by the product itself (BLAS's alpha):
    no extra pass over the result, and bit for bit equal when ``alpha`` is a power of 2. With
    ``into`` (a product of this function's) it is added to ``into`` in place (BLAS's beta =
    1): a sum of two products holds no third matrix."""
    batch = left.shape[:-2]
    if right.shape[:-2] != batch or (into is not None and into.shape[:-2] != batch):
        product = (left @ right).mul_(alpha)  # broadcast batches: a flat view would copy
        return product if into is None else into.add_(product)
    if left.ndim == 2:
        if into is not None:
            return into.addmm_(left, right, alpha=alpha)
        return torch.addmm(left.new_empty(()), left, right, beta=0, alpha=alpha)
    flat = (left.reshape(-1, *left.shape[-2:]), right.reshape(-1, *right.shape[-2:]))
    if into is not None:
        into.view(-1, *into.shape[-2:]).baddbmm_(*flat, alpha=alpha)
        return into
    product = torch.baddbmm(left.new_empty(()), *flat, beta=0, alpha=alpha)  # beta=0: unread
    return product.reshape(*batch, left.shape[-2], right.shape[-1])


@dataclass(frozen=True)
class Formulation:
    """One formulation of the problem (see the module's table). Compare and print by
    :attr:`name`; build none yourself: use :data:`LEFT`, :data:`RIGHT`, :data:`SYMMETRIC` or
    :func:`as_formulation`.

    Example:
        >>> m = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
        >>> LEFT.product(torch.linalg.inv(m), m)
        tensor([[1., 0.],
                [0., 1.]])
        >>> RIGHT.order((5, 3)), LEFT.label
        (5, '||XM-I||/√k')
    """

    name: FormulationName
    label: str  # the residual as printed: the product against I over sqrt(k)
    needs_square: bool  # the product only makes sense for a square M
    allows_column_split: bool  # the loss is a sum over E's columns (rows) that ranks can split
    spectrum_is_ms: bool  # the operator X -> E has M's singular values

    def __str__(self) -> str:
        return self.name

    def order(self, matrix_shape: Sequence[int]) -> int:
        """k, the order of the product E for an M of shape ``(..., m, n)``."""
        return matrix_shape[-2] if self.name == "right" else matrix_shape[-1]

    def product(
        self,
        inverse: Tensor,  # shape: (..., n, m)
        matrix: Tensor,  # shape: (..., m, n)
    ) -> Tensor:  # shape: (..., k, k)
        """The product E; differentiable in both."""
        if self.name == "left":
            return inverse @ matrix
        if self.name == "right":
            return matrix @ inverse
        return (inverse @ matrix + matrix @ inverse) / 2

    def gradient(
        self,
        error: Tensor,  # shape: (..., k, k), E - I (or its columns' part)
        matrix: Tensor,  # shape: (..., m, n), M (or its columns' part)
        scale: float,
    ) -> Tensor:  # shape: (..., n, m)
        r"""``scale`` times :math:`\mathcal{A}^*(E - I)`: the loss's gradient for ``scale =
        2/k^2`` (two matrix products, four for ``symmetric``)."""
        matrix_h = matrix.mH
        if self.name == "left":
            return _scaled_product(error, matrix_h, scale)
        if self.name == "right":
            return _scaled_product(matrix_h, error, scale)
        gradient = _scaled_product(error, matrix_h, scale / 2)
        return _scaled_product(matrix_h, error, scale / 2, into=gradient)

    def normal_operator(
        self,
        v: Tensor,  # shape: (..., n, m)
        matrix: Tensor,  # shape: (..., m, n)
    ) -> Tensor:  # shape: (..., n, m)
        r""":math:`\mathcal{A}^*\mathcal{A}(V)`, whose eigenvalues are the operator's squared
        singular values."""
        if self.name == "left":
            return v @ matrix @ matrix.mH
        if self.name == "right":
            return matrix.mH @ (matrix @ v)
        # each half added into the other: two matrices besides V, not four
        image = _scaled_product(matrix, v, 0.5, into=_scaled_product(v, matrix, 0.5))
        matrix_h = matrix.mH
        return _scaled_product(matrix_h, image, 0.5, into=_scaled_product(image, matrix_h, 0.5))

    def operator_singular_values(self, matrix: Tensor) -> Tensor:  # (..., m, n) -> (..., k)
        r"""The exact singular values of :math:`\mathcal{A}`, largest first, in the wide dtype.

        For ``symmetric`` the operator is the :math:`n^2 \times n^2` matrix
        :math:`(M^\top \otimes I + I \otimes M)/2`: keep n small there.
        """
        if self.spectrum_is_ms:
            return wide_svdvals(matrix)
        work = matrix.to(torch.complex128 if matrix.is_complex() else torch.float64)
        n = matrix.shape[-1]
        eye = torch.eye(n, dtype=work.dtype, device=work.device)
        # vec(XM) = (M^T kron I) vec(X) and vec(MX) = (I kron M) vec(X), vec stacking columns.
        operators = torch.stack(
            [
                (torch.kron(m.mT.contiguous(), eye) + torch.kron(eye, m)) / 2
                for m in work.reshape(-1, n, n)
            ]
        )
        return torch.linalg.svdvals(operators).reshape(*work.shape[:-2], n * n)

    def projector_basis(self, u: Tensor, vh: Tensor) -> Tensor:  # (..., m, r), (..., r, n)
        """From M's thin SVD, the orthonormal basis whose projector the product of a
        rank-deficient M tends to: M's column space for ``right``, its row space otherwise."""
        return u if self.name == "right" else vh.mH

    def columns_of(self, tensor: Tensor, columns: slice) -> Tensor:
        """The part of M (or of ``E - T``) that the product's ``columns`` involve: M's and E's
        columns for ``left``, their rows for ``right``."""
        if not self.allows_column_split:
            raise InvalidOptionError(
                f"formulation {self.name!r} has no column split: use 'left' or 'right'"
            )
        return tensor[..., :, columns] if self.name == "left" else tensor[..., columns, :]

    def factors(self, inverse: Tensor, matrix: Tensor) -> Tuple[Tensor, Tensor]:
        """The product's two factors, in order, for a one-sided formulation: ``(X, M)`` for
        ``left``, ``(M, X)`` for ``right`` (``E = left @ right``, for a product written into
        memory at hand)."""
        if not self.allows_column_split:
            raise InvalidOptionError(f"formulation {self.name!r} has no single product")
        return (inverse, matrix) if self.name == "left" else (matrix, inverse)

    def inverse_part(self, part: slice) -> Tuple[Any, int]:
        """Where X's ``part`` lies, whose product with M (:meth:`product`) is E's same part
        (X's and E's rows for ``left``, their columns for ``right``), as an index of both, and
        the diagonal of E's part that holds I's ones."""
        if not self.allows_column_split:
            raise InvalidOptionError(f"formulation {self.name!r} has no part of X to split")
        start = part.start or 0
        if self.name == "left":
            return (..., part, slice(None)), start
        return (..., slice(None), part), -start

    def identity_offset(self, columns: slice) -> int:
        """The diagonal of the part's product that holds I's ones (see :meth:`columns_of`)."""
        start = columns.start or 0
        return -start if self.name == "left" else start

    @property
    def other_side(self) -> Optional[Tuple["Formulation", str]]:
        """For a one-sided formulation, the other one and the equation its X satisfies."""
        if self.name == "left":
            return RIGHT, "M X = I"
        if self.name == "right":
            return LEFT, "X M = I"
        return None


LEFT = Formulation("left", "||XM-I||/√k", False, True, True)
RIGHT = Formulation("right", "||MX-I||/√k", False, True, True)
SYMMETRIC = Formulation("symmetric", "||E-I||/√k", True, False, False)
FORMULATIONS: Dict[str, Formulation] = {f.name: f for f in (LEFT, RIGHT, SYMMETRIC)}


def as_formulation(value: Union[str, Formulation]) -> Formulation:
    """The formulation object for a name (or the object itself).

    Example:
        >>> as_formulation("right") is RIGHT
        True
    """
    if isinstance(value, Formulation):
        return value
    if value not in FORMULATIONS:
        raise InvalidOptionError(f"formulation must be one of {list(FORMULATIONS)}, got {value!r}")
    return FORMULATIONS[value]
