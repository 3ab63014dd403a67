r"""Refinement steps: the last digits of an inverse, after gradient descent.

The step :math:`X \leftarrow X + C X` with the correction :math:`C = I - X M` (minus the error)
squares it, :math:`C \leftarrow C^2`, so it converges quadratically wherever
:math:`\lVert C\rVert_2 < 1`: a residual of 0.25 reaches float64's floor in five steps of two
matrix products, where heavy ball needs about :math:`(\kappa/2) \ln(0.25/\text{tol})` steps.
:math:`C` is accumulated in float64 for float32 matrices (complex128 for complex64), so the
float32 result is limited by how X is stored (near :math:`\epsilon_{32}\kappa`), not by how
its error was measured: more accurate than LAPACK's float32 inverse. The cancellation in
:math:`I - XM` happens in float64; C is then stored in X's dtype, whose rounding keeps C's own
relative precision, all that the step :math:`CX` (taken in X's dtype) uses: no float64 copy
of C is held.

A side: the step is :math:`2X - XMX` either way, but its rounding is not. Taken as
:math:`X + CX` from :math:`C = I - XM`, it leaves :math:`XM - I` at the floor while
:math:`MX - I = M (XM - I) M^{-1}` can be :math:`\kappa` times larger (float64 at
:math:`\kappa = 10^6`: 1e-11 against 6e-6); a right inverse's steps
(:data:`~gdinv_modules.core.formulation.RIGHT`) take :math:`X + XC` from :math:`C = I - MX`.
No step squares the symmetric product's :math:`(XM + MX)/2 - I`: its X is refined on the left
(:func:`one_side`) and its residual measured apart.

A probe, then a safe restart: where descent left :math:`\lVert C\rVert_F \ge 1` (a transient,
a float32 floor above 1, a budget too small for heavy ball, or the symmetric formulation's X,
whose own residual says little of :math:`XM - I`), the steps still converge from X wherever
C's spectral radius is below 1: after j steps C is :math:`C^{2^j}`, though its norm may rise
first where C is far from normal. So X is probed: it takes steps for as long as each lowers
:math:`\lVert C\rVert_F`, and at the first that does not, above 1, the matrix restarts from
:math:`X_0 = M^H / (\lVert M\rVert_1 \lVert M\rVert_\infty)`, from which the steps converge
for any invertible M (Newton-Schulz's start) in about :math:`2\log_2\kappa + \log_2 n + 5`
steps; X = 0 and a non-finite X start there at once (``start_over``: every matrix, as after
a skipped descent). The safe start's first steps grow the smallest singular values of
:math:`X M` 2-fold each, which the norm of :math:`C` may not show for many steps (for
:math:`\kappa = 10^{10}`, about 60): until the residual falls below :data:`WARM_RESIDUAL`, a
restarted matrix takes every step that does not raise it.

A scaled restart, where M's singular values are known (the rank check's): X starts at
:math:`X_0 = M^H / s` with :math:`s = \sigma_\max^2 (1 + \delta)`, so the eigenvalues of
:math:`X M` lie in :math:`[\ell, 2 - \ell]` with :math:`\ell = (1 - \delta)
\sigma_\min^2 / s`, and each step is scaled, :math:`X \leftarrow \alpha (X + C X)` with
:math:`\alpha = 2 / (1 + \ell (2 - \ell))`, which maps that interval onto
:math:`[\ell', 2 - \ell']`, :math:`\ell' = \alpha \ell (2 - \ell)`: about 4-fold where
:math:`\ell` is small, where the plain step grows it 2-fold (Pan and Schreiber, SIAM J. Sci.
Stat. Comput. 12(5), 1991). From :math:`\ell \approx \kappa^{-2}` that is about
:math:`\log_2 \kappa` steps where the safe start takes :math:`2 \log_2 \kappa + \log_2 n`.
Until :math:`\ell` reaches :data:`SCALED_UNTIL` a step is taken whatever the norm of C says
(eigenvalues that reached 1 move to the interval's far end and back); then plain steps and
the rules above. Between two scaled steps the correction may be one product in X's dtype (a
float32 M's, with IEEE products): where :math:`\ell` lies far above that product's rounding
(:func:`rough_floor`), the rounding moves no eigenvalue of XM out of :math:`(0, 2)`, and no
norm of C is judged until the scaled steps end; the corrections after them are wide. The
first correction, :math:`I - M^H M / s`, needs no product where the caller has M's Gram
matrix (the rank check took its values from it: :func:`scaled_correction`).

A rough start: where X's correction was measured by a product in X's own dtype (the last
check's, for a float32 M), the first step is taken from it where it lies far above that
product's likely rounding (:func:`product_rounding`), and kept for the matrices whose residual,
measured in the wide dtype, it lowers; the others' correction is taken anew. One wide
correction fewer, and no digit lost where the estimate misjudges (a product in TF32, say).
"""

import math
from dataclasses import dataclass
from typing import Optional, Tuple, TypeVar

import torch
from torch import Tensor

from gdinv_modules.core.errors import InvalidOptionError
from gdinv_modules.core.formulation import LEFT, SYMMETRIC, Formulation
from gdinv_modules.core.functional import (
    WIDE_BLOCKS,
    autocast_off,
    blocks,
    product_into,
    wide_dtype,
)

__all__ = [
    "refine",
    "refine_counted",
    "refinement_step",
    "Refinement",
    "correction",
    "safe_start",
    "scaled_start",
    "scaled_correction",
    "scaled_steps",
    "product_rounding",
    "rough_floor",
    "ieee_products",
    "MAX_REFINE_STEPS",
    "SAFE_RESIDUAL",
    "WARM_RESIDUAL",
    "one_side",
]

MAX_REFINE_STEPS = 100  # from the safe start, 2 log2(kappa) + log2(n) + 5: kappa up to 1e14
SAFE_RESIDUAL = 1.0  # ||I - X M||_F below this: the steps converge from X itself
WARM_RESIDUAL = 0.5  # a restarted matrix is judged by the keep-best rule below this
QUADRATIC_SLACK = 4.0  # a step that leaves more than this times ||C||^2 is at the floor
ROUGH_MARGIN = 4.0  # a rough correction is stepped from where ||C||^2 is this far above rounding
SCALED_MARGIN = 0.01  # the scaled start's relative margin on M's extreme singular values
SCALED_UNTIL = 0.9  # scaled steps until XM's eigenvalues are known to lie in [this, 2 - this]
SCALED_GROWTH = 4.0  # a scaled step multiplies ||X|| by at most this: alpha (< 2) ||I + C|| (<= 2)
Bound = TypeVar("Bound", float, Tensor)  # a lower bound on XM's eigenvalues: one, or per matrix


@dataclass
class Refinement:
    r"""What :func:`refine` did.

    Attributes:
        inverse: the refined X, M's dtype, shape ``(..., n, n)``.
        residual: per matrix, :math:`\lVert C\rVert_F / \sqrt n` (:math:`C = I - XM`, or
            :math:`I - MX` for ``RIGHT``), C measured in the wide dtype and rounded to
            X's (relative to the residual itself: eps of X's dtype).
        steps: refinement steps taken (the batch takes them together).
        restarted: per matrix, whether the steps went on from the safe start instead of X.
    """

    inverse: Tensor
    residual: Tensor
    steps: int
    restarted: Tensor


def correction(
    inverse: Tensor,
    matrix: Tensor,
    *,
    out: Optional[Tensor] = None,
    rough: bool = False,
    formulation: Formulation = LEFT,
) -> Tensor:  # (..., n, n) in X's dtype
    r"""The correction :math:`C = I - XM` (:data:`~gdinv_modules.core.formulation.RIGHT`:
    :math:`I - MX`), accumulated in the wide dtype and stored in X's (module docstring), a new
    tensor or into ``out`` (a correction no longer needed, in place:
    :func:`~gdinv_modules.core.functional.product_into`). Where X's dtype is narrower, it is
    taken :data:`~gdinv_modules.core.functional.WIDE_BLOCKS` blocks at a time, of a batch's
    matrices where it holds that many (whole products, no strided copies), else of rows (each
    row of XM needs only its row of X; each column of MX its column), so only a block of X and
    of C is ever wide. ``rough``: one product in X's dtype instead, off by about
    :func:`product_rounding`.

    Example:
        >>> correction(torch.eye(2), 2 * torch.eye(2))
        tensor([[-1., -0.],
                [-0., -1.]])
        >>> from gdinv_modules.core.formulation import RIGHT
        >>> m = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
        >>> correction(torch.eye(2), m, formulation=RIGHT)  # I - MX
        tensor([[ 0., -1.],
                [-0.,  0.]])
    """
    wide = inverse.dtype if rough else wide_dtype(matrix.dtype)
    matrix = matrix.to(wide)
    if inverse.dtype == wide:
        factors = formulation.factors(inverse, matrix)
        out = torch.matmul(*factors) if out is None else product_into(out, *factors)
    else:
        k = formulation.order(matrix.shape)  # C is k x k, as E
        if out is None:
            out = inverse.new_empty((*inverse.shape[:-2], k, k))
        if (
            inverse.dim() > 2
            and inverse.shape[0] >= WIDE_BLOCKS
            and matrix.shape[:-2] == inverse.shape[:-2]
        ):  # whole matrices, a block of the batch at a time: no strided copies, full products
            for block in blocks(inverse.shape[0]):
                product = formulation.product(inverse[block].to(wide), matrix[block])
                product.neg_().diagonal(dim1=-2, dim2=-1).add_(1)
                out[block] = product
                del product
            return out
        for block in blocks(k):
            part, ones = formulation.inverse_part(block)
            product = formulation.product(inverse[part].to(wide), matrix)  # E's part
            product.neg_().diagonal(ones, dim1=-2, dim2=-1).add_(1)  # C's part, still wide
            out[part] = product  # stored in X's dtype
            del product  # before the next block's: one block of C is wide at a time
        return out
    out.neg_().diagonal(dim1=-2, dim2=-1).add_(1)
    return out


def refinement_step(
    inverse: Tensor,
    current: Tensor,
    *,
    out: Optional[Tensor] = None,
    formulation: Formulation = LEFT,
) -> Tensor:  # shape: (..., n, n)
    r"""One step :math:`X \leftarrow X + C X` (:data:`~gdinv_modules.core.formulation.RIGHT`:
    :math:`X + X C`), given X's correction C in X's dtype; returns the new X, a new tensor or
    ``out`` (an X no longer needed, written in place:
    :func:`~gdinv_modules.core.functional.product_into`). The sum rounds once: ``X + fl(CX)``,
    not a product accumulated onto X (``addmm``'s, whose float64 floor came out twice as high).

    Example:
        >>> refinement_step(torch.eye(2), torch.full((2, 2), 0.5))
        tensor([[1.5000, 0.5000],
                [0.5000, 1.5000]])
    """
    factors = formulation.factors(current, inverse)  # C X as E is X M: (C, X), or (X, C)
    out = torch.matmul(*factors) if out is None else product_into(out, *factors)
    out += inverse
    return out


def refine_counted(
    inverse: Tensor,
    matrix: Tensor,
    steps: int,
    current: Optional[Tensor] = None,
    *,
    rough: int = 0,
) -> Tuple[Tensor, Tensor]:  # shapes: (..., n, n), (..., n, n)
    """``steps`` refinement steps with no host sync (the caller counted them from the
    residual); returns X and its correction, measured wide. ``current``: X's correction, where
    the caller has it already; the steps' corrections overwrite it. ``rough``: the first steps
    that take a rough correction (``correction(..., rough=True)``), ``current`` among them; the
    caller counts their rounding in.

    Example:
        >>> m = torch.tensor([[4.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
        >>> x, c = refine_counted(torch.linalg.inv(m) + 0.01, m, 4)
        >>> bool(torch.linalg.matrix_norm(c) < 1e-14)
        True
    """
    with autocast_off(matrix):
        wide_matrix = matrix.to(wide_dtype(matrix.dtype))  # once, not at every correction
        current = correction(inverse, wide_matrix) if current is None else current
        for step in range(1, steps + 1):
            inverse = refinement_step(inverse, current)
            if step < rough:
                current = correction(inverse, matrix, out=current, rough=True)
            else:
                current = correction(inverse, wide_matrix, out=current)
    return inverse, current


def safe_start(matrix: Tensor) -> Tensor:  # shape: (..., n, n)
    r""":math:`M^H / (\lVert M\rVert_1 \lVert M\rVert_\infty)`: :math:`\lVert I - X_0 M\rVert_2
    < 1` for every invertible M.

    Example:
        >>> safe_start(torch.tensor([[2.0, 0.0], [0.0, 4.0]]))
        tensor([[0.1250, 0.0000],
                [0.0000, 0.2500]])
    """
    scale = torch.linalg.matrix_norm(matrix, 1) * torch.linalg.matrix_norm(matrix, float("inf"))
    return matrix.mH / scale[..., None, None]


def scaled_start(
    matrix: Tensor,  # shape: (..., n, n)
    singular_values: Tensor,  # shape: (..., n), M's, largest first
) -> Tuple[Tensor, Tensor]:  # shapes: (..., n, n), (...)
    r""":math:`X_0 = M^H / (\sigma_\max^2 (1 + \delta))` and the lower bound
    :math:`\ell = \sigma_\min^2 (1 - \delta) / (\sigma_\max^2 (1 + \delta))` on the
    eigenvalues of :math:`X_0 M` (float64), :math:`\delta` = :data:`SCALED_MARGIN`: the start of
    the scaled steps (module docstring).

    Example:
        >>> m = torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
        >>> start, lower = scaled_start(m, torch.tensor([4.0, 2.0], dtype=torch.float64))
        >>> torch.diagonal(start @ m).tolist() == [4 / 16.16, 1 / 1.01], round(lower.item(), 6)
        (True, 0.24505)
    """
    top = _scaled_top(singular_values)
    lower = singular_values[..., -1].double().square() * (1 - SCALED_MARGIN) / top
    return matrix.mH / top.to(matrix.real.dtype)[..., None, None], lower


def _scaled_top(singular_values: Tensor) -> Tensor:  # shape: (..., n) -> (...), float64
    r""":func:`scaled_start`'s divisor :math:`s = \sigma_\max^2 (1 + \delta)`."""
    return singular_values[..., 0].double().square() * (1 + SCALED_MARGIN)


def scaled_correction(
    gram: Tensor,  # shape: (..., n, n), M^H M in the wide dtype (wide_gram), overwritten
    singular_values: Tensor,  # shape: (..., n), M's, largest first
    inverse: Tensor,  # shape: (..., n, n), X, for its dtype and device
) -> Tensor:  # shape: (..., n, n), X's dtype and device
    r"""The correction :math:`I - X_0 M = I - M^H M / s` of :func:`scaled_start`'s
    :math:`X_0`, from M's Gram matrix where the caller has it, in place of a product: for
    :func:`refine`'s ``start``. The rounding of :math:`X_0 = M^H / s`, which this leaves out,
    perturbs the step :math:`(I + C) X_0` as the correction's own rounding in X's dtype does:
    both multiply :math:`X_0 M` on the left, so its small eigenvalues move in proportion.

    Example:
        >>> m = torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
        >>> s = torch.tensor([4.0, 2.0], dtype=torch.float64)
        >>> start, _ = scaled_start(m, s)
        >>> torch.allclose(scaled_correction(m.mT @ m, s, start), correction(start, m))
        True
    """
    top = _scaled_top(singular_values).to(device=gram.device, dtype=gram.real.dtype)
    gram.div_(top[..., None, None]).neg_().diagonal(dim1=-2, dim2=-1).add_(1)
    return gram.to(device=inverse.device, dtype=inverse.dtype)


def scaled_steps(kappa: float) -> int:
    r"""The scaled steps a restart from M's singular values takes for the condition number
    ``kappa``: from :func:`scaled_start`'s bound :math:`\ell` on XM's eigenvalues until it
    reaches :data:`SCALED_UNTIL`, :math:`\ell \leftarrow \alpha \ell (2 - \ell)` with
    :math:`\alpha = 2 / (1 + \ell (2 - \ell))` (module docstring).

    Example:
        >>> [scaled_steps(kappa) for kappa in (2.25, 10, 1e4, 1e8)]
        [3, 5, 15, 28]

    Raises:
        InvalidOptionError: ``kappa`` is below 1, or its square is not finite.
    """
    lower, steps = (1 - SCALED_MARGIN) / ((1 + SCALED_MARGIN) * kappa * kappa), 0
    if not (kappa >= 1 and lower > 0):
        raise InvalidOptionError(
            f"scaled_steps needs a condition number of at least 1, its square finite: {kappa}"
        )
    while lower < SCALED_UNTIL:
        lower, steps = _scaled_step(lower)[1], steps + 1
    return steps


def _scaled_step(lower: Bound) -> Tuple[Bound, Bound]:
    r"""A scaled step's :math:`\alpha = 2 / (1 + \ell (2 - \ell))` and the bound it leaves,
    :math:`\alpha \ell (2 - \ell)` (module docstring), for a float or per matrix."""
    alpha = 2 / (1 + lower * (2 - lower))
    return alpha, alpha * lower * (2 - lower)


def product_rounding(
    inverse: Tensor, matrix: Tensor, *, matrix_norm: Optional[Tensor] = None
) -> Tensor:  # shape: (...)
    r"""The likely size of the rounding in the product XM taken in X's dtype, per matrix:
    :math:`\sqrt n\, u \lVert X\rVert_F \lVert M\rVert_F` with u the unit roundoff (Higham
    and Mary's probabilistic bound, SIAM J. Sci. Comput. 41(5), 2019: the errors of a sum of
    n products add up as a random walk; the worst case is n times as large), for products in
    IEEE arithmetic (not TF32's). An estimate for choosing, not a bound to rely on.
    ``matrix_norm``: :math:`\lVert M\rVert_F`, where the caller has it (M does not change
    along the steps).

    Example:
        >>> estimate = product_rounding(torch.eye(4), torch.eye(4))  # sqrt(4) u 2 2
        >>> bool(estimate == 2 * 2.0**-24 * 4)
        True
    """
    unit = torch.finfo(inverse.dtype).eps / 2
    scale = (matrix.shape[-2] ** 0.5) * unit
    if matrix_norm is None:
        matrix_norm = torch.linalg.matrix_norm(matrix)
    return scale * torch.linalg.matrix_norm(inverse) * matrix_norm


def rough_floor(
    inverse: Tensor, matrix: Tensor, *, matrix_norm: Optional[Tensor] = None
) -> Tensor:  # shape: (...)
    r""":data:`ROUGH_MARGIN` times :func:`product_rounding` (``matrix_norm`` as there): a
    rough correction serves a step where :math:`\lVert C\rVert_F^2` lies above it (the step
    leaves about :math:`\lVert C\rVert^2` plus the rounding), and a count of steps taken from
    rough corrections allows each this much.

    Example:
        >>> eye = torch.eye(4)
        >>> bool(rough_floor(eye, eye) == ROUGH_MARGIN * product_rounding(eye, eye))
        True
    """
    return ROUGH_MARGIN * product_rounding(inverse, matrix, matrix_norm=matrix_norm)


def ieee_products(device: torch.device) -> bool:
    """Whether float32 products on ``device`` round as IEEE arithmetic does, as
    :func:`product_rounding` assumes: not where TF32 or bfloat16 passes are allowed
    (``torch.backends.cuda.matmul.fp32_precision``, ``torch.backends.mkldnn.matmul``'s on the
    CPU, or ``torch.set_float32_matmul_precision``), nor on another device.

    Example:
        >>> ieee_products(torch.device("cpu"))  # torch's default
        True
    """
    backends = {"cuda": torch.backends.cuda.matmul, "cpu": torch.backends.mkldnn.matmul}
    backend = backends.get(device.type)
    return backend is not None and backend.fp32_precision in ("none", "ieee")


def one_side(formulation: Formulation) -> Formulation:
    """The formulation whose correction refinement squares for ``formulation``: itself for
    ``left`` and ``right``; ``left`` for ``symmetric`` (module docstring).

    Example:
        >>> from gdinv_modules.core.formulation import RIGHT
        >>> one_side(SYMMETRIC) is LEFT, one_side(RIGHT) is RIGHT
        (True, True)
    """
    return LEFT if formulation is SYMMETRIC else formulation


def _rough_ahead(
    lower: Tensor,  # shape: (...), the scaled steps' bounds at X
    inverse: Tensor,  # shape: (..., n, n), X, the next step's start
    matrix: Tensor,  # shape: (..., n, n), M in X's dtype
    matrix_norm: Tensor,  # shape: (...), its Frobenius norm
) -> Tensor:  # shape: (), bool
    r"""Whether the correction after the next step may be rough (module docstring): for every
    matrix the next step and the one after it are scaled, and the bound :math:`\ell'` the
    next step leaves lies :data:`ROUGH_MARGIN` times above :func:`rough_floor` at a product
    with :data:`SCALED_GROWTH` times X's norm (the next step's X is at most that: :math:`\alpha
    < 2` and :math:`\lVert I + C\rVert_2 \le 2 - \ell`). The rough product's likely
    rounding then moves XM's eigenvalues by less than a quarter of :math:`\ell'`: the step
    after still maps them into :math:`(0, 2)`, where the plain steps square C down."""
    ahead = _scaled_step(lower)[1]
    floor = SCALED_GROWTH * rough_floor(inverse, matrix, matrix_norm=matrix_norm)
    return ((lower < SCALED_UNTIL) & (ahead < SCALED_UNTIL) & (ahead >= ROUGH_MARGIN * floor)).all()


def _rough_step(
    inverse: Tensor, rough: Tensor, matrix: Tensor, wide_matrix: Tensor, formulation: Formulation
) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor], int]:
    """The first step from a correction measured in X's dtype, where it lies well above
    :func:`product_rounding`, kept where the wide residual falls; returns X, its correction
    measured wide (into ``rough``'s memory) and that correction's norm, an X no longer needed
    (the next step's memory) and the steps taken (0 or 1)."""
    norm = torch.linalg.matrix_norm(rough)
    floor = rough_floor(inverse, matrix)
    usable = (norm < SAFE_RESIDUAL) & (norm.square() >= floor)
    steps = 0
    if bool(usable.all()):
        candidate = refinement_step(inverse, rough, formulation=formulation)
        # measured wide: judged as ever
        current = correction(candidate, wide_matrix, out=rough, formulation=formulation)
        candidate_norm = torch.linalg.matrix_norm(current)
        better = candidate_norm < norm
        moved, every = torch.stack([better.any(), better.all()]).tolist()
        if every:
            spare = inverse if inverse.is_contiguous() else None
            return candidate, current, candidate_norm, spare, 1
        # where the rough correction served a matrix badly, every correction is taken anew
        if moved:
            inverse, steps = torch.where(better[..., None, None], candidate, inverse), 1
    current = correction(inverse, wide_matrix, out=rough, formulation=formulation)
    return inverse, current, torch.linalg.matrix_norm(current), None, steps


def refine(
    inverse: Tensor,  # shape: (..., n, n), X from descent; its memory serves the steps
    matrix: Tensor,  # shape: (..., n, n), M, square and invertible
    *,
    max_steps: int = MAX_REFINE_STEPS,
    current: Optional[Tensor] = None,  # shape: (..., n, n), X's correction, if known
    rough: Optional[Tensor] = None,  # shape: (..., n, n), one from a product in X's dtype
    formulation: Formulation = LEFT,  # or RIGHT: whose correction the steps square
    singular_values: Optional[Tensor] = None,  # shape: (..., n), M's, for a scaled restart
    start_over: bool = False,  # every matrix restarts: X's values are no start
    start: Optional[Tensor] = None,  # shape: (..., n, n), the scaled start's correction
) -> Refinement:
    r"""Refinement steps :math:`X \leftarrow X + (I - XM) X` until the residual stops falling;
    ``RIGHT``: :math:`X \leftarrow X + X (I - MX)`, the same step in exact arithmetic,
    whose rounding leaves :math:`MX - I` at the floor instead of :math:`XM - I` (a right
    inverse's residual; the other side's can be up to :math:`\kappa` times larger).

    Each matrix keeps its best X: a step that does not lower a matrix's residual is not
    taken for it (a restarted matrix above :data:`WARM_RESIDUAL` takes any step that does not
    raise it; a probed one restarts, module docstring), and a matrix whose last step fell far
    short of squaring its correction has met the rounding floor and takes no more; the steps
    end once no matrix moves or every one met its floor (one host sync per step). Two X's are
    alive at a time: each step writes its X into the memory of the one before last,
    ``inverse``'s own from the second step on, and a restart its safe start into X's (pass a
    copy to keep it). ``rough``: X's correction measured in X's dtype, tried for the first
    step (module docstring); its memory serves the corrections. Pass it or ``current``.
    ``singular_values``: M's, largest first; a restart then takes the scaled start and its
    scaled steps (module docstring). ``start_over``: every matrix restarts, with no probe (X
    from a descent that could not help). ``start``: with ``start_over`` and
    ``singular_values``, the scaled start's correction, where the caller made it from M's
    Gram matrix (:func:`scaled_correction`); its memory serves the corrections.

    Example:
        >>> m = torch.tensor([[4.0, 1.0], [2.0, 3.0]])
        >>> rough = torch.linalg.inv(m) + 0.01
        >>> result = refine(rough, m)
        >>> bool(result.residual.max() < 1e-6), result.restarted.item()
        (True, False)
        >>> far = torch.diag(torch.tensor([1.0, 1e-10], dtype=torch.float64))
        >>> plain = refine(torch.zeros_like(far), far)  # kappa 1e10: restarted
        >>> scaled = refine(torch.zeros_like(far), far, singular_values=torch.diagonal(far))
        >>> plain.residual.item() < 1e-15 and scaled.residual.item() < 1e-15
        True
        >>> plain.steps, scaled.steps
        (72, 39)
    """
    if current is not None and rough is not None:
        raise InvalidOptionError("refine() takes X's correction once: current or rough")
    if start is not None and (not start_over or singular_values is None or formulation is not LEFT):
        raise InvalidOptionError(
            "refine()'s start is the scaled start's left correction I - M^H M / s: pass it "
            "with start_over=True and M's singular_values, for the left formulation"
        )
    if formulation is not one_side(formulation):
        raise InvalidOptionError(
            f"refinement squares one side's correction: {formulation.name!r} has none; pass "
            "one_side(formulation)"
        )
    # ``current``: overwritten by the next correction (its memory serves each step's)
    spare: Optional[Tensor] = None  # an X no longer needed: the next step's memory
    steps = 0
    with torch.no_grad(), autocast_off(matrix):
        n = matrix.shape[-1]
        wide_matrix = matrix.to(wide_dtype(matrix.dtype))  # once, not at every correction
        if start_over:  # X's correction serves no step: only its memory, the restart's
            current = next((c for c in (start, current, rough) if c is not None), None)
            if current is None:
                current = inverse.new_empty(inverse.shape)  # M is square: C is X's shape
            norm = inverse.new_full(inverse.shape[:-2], math.inf, dtype=inverse.real.dtype)
        elif rough is not None and max_steps > 0:
            inverse, current, norm, spare, steps = _rough_step(
                inverse, rough, matrix, wide_matrix, formulation
            )
        else:
            if current is None:
                current = correction(inverse, wide_matrix, formulation=formulation)
            norm = torch.linalg.matrix_norm(current)
        far = torch.ones_like(norm, dtype=torch.bool) if start_over else ~(norm < SAFE_RESIDUAL)
        restarted, probing = torch.zeros_like(far), torch.zeros_like(far)  # far: NaN too
        # per matrix, a lower bound on XM's eigenvalues along scaled steps (module docstring),
        # once a scaled restart made one; 1 where none are taken
        lower: Optional[Tensor] = None
        probe = scaling = False  # whether any matrix probes, and any may take scaled steps
        # whether the next correction is taken rough, between two scaled steps (module
        # docstring): where X's dtype is narrower than the wide one and products are IEEE's
        rough_between = matrix.dtype != wide_matrix.dtype and ieee_products(matrix.device)
        rough_next = False
        matrix_norm = torch.linalg.matrix_norm(matrix) if rough_between else None

        def restart(
            which: Tensor, known: bool = False
        ) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
            """:func:`_restart` of the matrices ``which``, from X, C, its norm and the scaled
            steps' bounds as they are; ``known``: C is the restart's correction already."""
            return _restart(
                inverse, matrix, wide_matrix, current, norm, which, formulation, lower,
                singular_values, known,
            )  # fmt: skip

        if bool(far.any()):
            # no step moves X = 0 (a skipped descent), nor helps a non-finite X; the others
            # are probed from X (module docstring)
            restarted = (
                far
                if start_over
                else far & (~torch.isfinite(norm) | (torch.linalg.matrix_norm(inverse) == 0))
            )
            probing = far & ~restarted
            any_restarted, probe = torch.stack([restarted.any(), probing.any()]).tolist()
            if any_restarted:
                inverse, current, norm, lower = restart(restarted, start is not None)
                scaling = lower is not None
                if scaling and rough_between:  # the first step's correction is the restart's
                    rough_next = bool(_rough_ahead(lower, inverse, matrix, matrix_norm))
        # per matrix: at its rounding floor, or its last step found nothing (the same X would
        # find the same step again)
        done = torch.zeros_like(restarted)
        while steps < max_steps:
            candidate = refinement_step(inverse, current, out=spare, formulation=formulation)
            if scaling:
                scaled = lower < SCALED_UNTIL
                alpha, bound = _scaled_step(lower)
                alpha = torch.where(scaled, alpha, 1.0)
                candidate.mul_(alpha.to(candidate.real.dtype)[..., None, None])
            if rough_next:
                current = correction(
                    candidate, matrix, out=current, rough=True, formulation=formulation
                )
            else:
                current = correction(candidate, wide_matrix, out=current, formulation=formulation)
            candidate_norm = torch.linalg.matrix_norm(current)
            warming = restarted & (norm >= WARM_RESIDUAL)
            better = (candidate_norm < norm) | (warming & (candidate_norm <= norm))
            if scaling:  # a scaled step is taken whatever ||C|| says (module docstring)
                better |= scaled
                lower = torch.where(scaled, bound, lower)
            better &= ~done
            # ||C^2||_F <= ||C||_F^2: a step that misses it QUADRATIC_SLACK-fold met the rounding
            done |= ~better | (~warming & (candidate_norm > QUADRATIC_SLACK * norm.square()))
            flags = []  # the probe's and the scaled steps', where they run: one host sync a step
            if scaling:
                done &= ~scaled
                flags.append((lower < SCALED_UNTIL).any())
                if rough_between:
                    flags.append(_rough_ahead(lower, candidate, matrix, matrix_norm))
            if probe:
                failed = probing & ~better  # a probe's step that did not lower ||C||: restart
                probing &= better & ~(candidate_norm < SAFE_RESIDUAL)
                done &= ~failed
                flags += [probing.any(), failed.any()]
            moved, every, finished, *rest = torch.stack(
                [better.any(), better.all(), done.all(), *flags]
            ).tolist()
            any_failed = rough_next = False
            if scaling:
                scaling = rest.pop(0)
                rough_next = rest.pop(0) if rough_between else False
            if probe:
                probe, any_failed = rest
            if moved:
                steps += 1
                # Only X is kept for a matrix that did not move: it is done (or restarts), its
                # correction unused.
                if not every:
                    candidate = torch.where(better[..., None, None], candidate, inverse)
                # not into a strided X: its rows' copies crawl
                spare, inverse = (inverse if inverse.is_contiguous() else None), candidate
                norm = torch.where(better, candidate_norm, norm)
            if any_failed:
                restarted |= failed
                inverse, current, norm, lower = restart(failed)
                scaling = lower is not None
            elif finished or not moved:
                break
        return Refinement(inverse, norm / n**0.5, steps, restarted)


def _restart(
    inverse: Tensor,
    matrix: Tensor,
    wide_matrix: Tensor,
    current: Tensor,
    norm: Tensor,
    which: Tensor,  # shape: (...), bool
    formulation: Formulation,
    lower: Optional[Tensor],  # shape: (...), the scaled steps' bounds, set in place for ``which``
    singular_values: Optional[Tensor],  # shape: (..., n)
    known: bool = False,  # ``current`` is the restart's correction (scaled_correction)
) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """The matrices ``which`` from :func:`scaled_start` where M's singular values are known,
    else from :func:`safe_start`, written into X in place (only their copies made); returns X,
    its correction (into ``current``, unless ``known``), that correction's norm and the scaled
    steps' bounds (made at the first scaled restart: 1 for the other matrices)."""
    if singular_values is None:
        inverse[which] = safe_start(matrix[which])
    else:
        if lower is None:
            lower = torch.ones(which.shape, dtype=torch.float64, device=which.device)
        inverse[which], lower[which] = scaled_start(matrix[which], singular_values[which])
    if not known:
        current = correction(inverse, wide_matrix, out=current, formulation=formulation)
    return inverse, current, torch.where(which, torch.linalg.matrix_norm(current), norm), lower
