"""``InverseModule``: the approximate inverse of a matrix as a trainable ``nn.Module``."""

from typing import Literal, Optional, Sequence, Tuple, Union, get_args

import torch
from torch import Tensor, nn

from gdinv_modules.core import validation
from gdinv_modules.core.errors import (
    InvalidOptionError,
    MatrixDtypeError,
    MatrixShapeError,
    NotReadyError,
)
from gdinv_modules.core.formulation import Formulation, FormulationName, as_formulation
from gdinv_modules.core.functional import (
    identity_error,
    inverse_loss,
    inverse_shape,
    relative_residual,
)
from gdinv_modules.core.validation import check_choice, check_matrix, check_positive_int

__all__ = ["InverseModule", "Init", "INITS", "initial_inverse"]

Init = Literal["random", "zeros"]
INITS: Tuple[str, ...] = get_args(Init)


def initial_inverse(
    shape: Sequence[int],
    *,
    init: Init = "random",
    seed: int = 314,
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device] = None,
) -> Tensor:  # shape: (..., n, n)
    """The first guess ``X0``.

    ``"random"`` is the post's guess: ``torch.rand(shape)`` drawn in float32 on the CPU right
    after seeding with ``seed``, then cast, so ``X0`` is the same matrix for every dtype and
    device (and, for the post's matrix drawn the same way, equals M itself). ``"zeros"`` starts
    in M's row space, from where gradient descent reaches the Moore-Penrose pseudo-inverse.

    Example:
        >>> initial_inverse((2, 2), init="zeros")
        tensor([[0., 0.],
                [0., 0.]])
    """
    check_choice(init, INITS, name="init")
    if init == "zeros":
        return torch.zeros(tuple(shape), dtype=dtype, device=device)
    generator = torch.Generator().manual_seed(seed)
    initial = torch.rand(tuple(shape), generator=generator, dtype=torch.float32)
    return initial.to(dtype=dtype, device=device)


class InverseModule(nn.Module):
    r"""An approximate inverse :math:`X` of :math:`M`, trained by gradient descent.

    ``forward`` returns the product E, :math:`XM` (``"left"``, the post's
    formulation a), :math:`MX` (``"right"``, b) or :math:`(XM + MX)/2` (``"symmetric"``, c).
    M may be rectangular, ``(..., m, n)``, with ``"left"`` (X is then a left inverse, for full
    column rank) or ``"right"`` (a right inverse, for full row rank); X has shape ``(..., n, m)``.
    Train it towards the identity with any optimizer (``LitInverse`` does it under a Trainer),
    or put it inside a model that produces :math:`M` and train the two together.

    Args:
        matrix: M, shape ``(..., n, n)`` (or ``(..., m, n)``); leading dimensions are a batch of
            independent matrices, each with its own inverse. Stored as the buffer ``matrix``;
            its floating dtype and device are kept.
        size: ``n``, or M's shape ``(m, n)``, to build the module without a matrix (M is then
            passed at call time).
        batch_shape: the leading dimensions of the parameter when built from ``size``.
        dtype: the parameter's dtype when built from ``size`` (default float32).
        device: the parameter's device when built from ``size``.
        formulation: ``"left"``, ``"right"`` or ``"symmetric"``.
        init: ``"random"`` (the post's ``torch.rand`` after seeding) or ``"zeros"``.
        seed: the seed of the random first guess.
        copy: store a copy of ``matrix``; ``False`` stores M itself (no second copy of a large
            M), which must then not change while the module uses it.

    ``forward`` takes no host sync, so ``torch.func.vmap``, ``torch.compile(fullgraph=True)``,
    ``torch.export`` and the meta device apply to it: a matrix passed at call time is checked
    for its shape and dtype only (a stored one for NaN and Inf too, once, at construction; the
    stepper and the tracker check theirs).

    Attributes:
        inverse: ``nn.Parameter`` of shape ``(..., n, m)``, the approximate inverse :math:`X`
            (``.detach()`` it for a plain tensor).
        matrix: buffer of shape ``(..., m, n)``, or ``None`` when built from ``size``.

    Example:
        >>> m = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
        >>> module = InverseModule(m, init="zeros")
        >>> optimizer = torch.optim.SGD(module.parameters(), lr=0.2, momentum=0.1)
        >>> for _ in range(100):
        ...     optimizer.zero_grad()
        ...     module.loss().sum().backward()
        ...     optimizer.step()
        >>> torch.allclose(module.inverse, torch.linalg.inv(m), atol=1e-5)
        True
    """

    matrix: Optional[Tensor]

    def __init__(
        self,
        matrix: Optional[Tensor] = None,
        *,
        size: Optional[Union[int, Tuple[int, int]]] = None,
        batch_shape: Sequence[int] = (),
        dtype: Optional[torch.dtype] = None,
        device: Optional[torch.device] = None,
        formulation: Union[FormulationName, Formulation] = "left",
        init: Init = "random",
        seed: int = 314,
        copy: bool = True,
    ) -> None:
        super().__init__()
        self.formulation: Formulation = as_formulation(formulation)
        check_choice(init, INITS, name="init")
        if matrix is not None:
            if size is not None or tuple(batch_shape) or dtype is not None or device is not None:
                raise InvalidOptionError(
                    "give either matrix, or size with batch_shape, dtype and device, not both"
                )
            validation.check_finite(check_matrix(matrix, square=self._needs_square))
            shape, dtype, device = inverse_shape(matrix.shape), matrix.dtype, matrix.device
            self.register_buffer("matrix", matrix.detach().clone() if copy else matrix.detach())
        else:
            if size is None:
                raise InvalidOptionError("give the matrix, or its size n to pass M at call time")
            rows, cols = (size, size) if isinstance(size, int) else tuple(size)
            check_positive_int(rows, name="size")
            check_positive_int(cols, name="size")
            if self._needs_square and rows != cols:
                raise MatrixShapeError(
                    f"formulation '{self.formulation}' needs a square M, got size {size}"
                )
            for dim in batch_shape:
                check_positive_int(dim, name="batch_shape entries")
            dtype = torch.float32 if dtype is None else dtype
            if not (dtype.is_floating_point or dtype.is_complex):
                raise MatrixDtypeError(f"dtype must be a floating or complex dtype, got {dtype}")
            shape = inverse_shape((*batch_shape, rows, cols))
            self.register_buffer("matrix", None)
        self.inverse = nn.Parameter(
            initial_inverse(shape, init=init, seed=seed, dtype=dtype, device=device)
        )

    @property
    def _needs_square(self) -> bool:
        return self.formulation.needs_square

    @property
    def matrix_shape(self) -> Tuple[int, int]:
        """``(m, n)``, the shape of one M."""
        return self.inverse.shape[-1], self.inverse.shape[-2]

    @property
    def order(self) -> int:
        """``k``, the order of the product E (``n`` for a square M)."""
        return self.formulation.order(self.matrix_shape)

    @property
    def batch_shape(self) -> torch.Size:
        """The leading (batch) dimensions of the parameter."""
        return self.inverse.shape[:-2]

    def resolve_matrix(self, matrix: Optional[Tensor] = None) -> Tensor:  # shape: (..., m, n)
        """The matrix to use: the one passed (checked against the parameter), else the buffer."""
        if matrix is None:
            if self.matrix is None:
                raise NotReadyError(
                    "this InverseModule was built from a size: pass the matrix at call time"
                )
            return self.matrix
        check_matrix(matrix, square=self._needs_square)
        if tuple(matrix.shape[-2:]) != self.matrix_shape:
            raise MatrixShapeError(
                f"matrix of shape {tuple(matrix.shape)} does not fit the approximate inverse of "
                f"shape {tuple(self.inverse.shape)}: the last two dimensions must be "
                f"{self.matrix_shape}"
            )
        try:
            torch.broadcast_shapes(matrix.shape[:-2], self.batch_shape)
        except RuntimeError:
            raise MatrixShapeError(
                f"matrix of shape {tuple(matrix.shape)} does not fit the approximate inverse of "
                f"shape {tuple(self.inverse.shape)}: the batch dimensions "
                f"{tuple(matrix.shape[:-2])} and {tuple(self.batch_shape)} do not broadcast"
            ) from None
        if matrix.dtype != self.inverse.dtype:
            raise MatrixDtypeError(
                f"matrix has dtype {matrix.dtype} but the approximate inverse has "
                f"{self.inverse.dtype}: convert one of them"
            )
        return matrix

    def forward(self, matrix: Optional[Tensor] = None) -> Tensor:  # shape: (..., k, k)
        """The product E; gradients flow into ``inverse`` and a passed ``matrix``."""
        return self.formulation.product(self.inverse, self.resolve_matrix(matrix))

    def loss(self, matrix: Optional[Tensor] = None, *, ridge: float = 0.0) -> Tensor:  # (...)
        r"""The loss per matrix, :math:`\lVert E - I\rVert_F^2 / k^2 + \lambda \lVert X\rVert_F^2`
        (differentiable)."""
        return inverse_loss(identity_error(self(matrix)), self.inverse, ridge)

    @torch.no_grad()
    def residual(
        self, matrix: Optional[Tensor] = None, target: Optional[Tensor] = None
    ) -> Tensor:  # shape: (...)
        r"""The relative residual :math:`\lVert E - T \rVert_F / \sqrt{k}`, one per matrix
        (``T`` the identity unless given)."""
        return relative_residual(self(matrix), target)

    def __prepare_scriptable__(self) -> "InverseModule":
        raise InvalidOptionError(
            "InverseModule cannot be scripted (torch.jit.script): its formulation is a Python "
            "object; use torch.compile, which compiles its forward with no graph break"
        )

    def extra_repr(self) -> str:
        return (
            f"matrix_shape={self.matrix_shape}, batch_shape={tuple(self.batch_shape)}, "
            f"formulation='{self.formulation}', dtype={self.inverse.dtype}"
        )
