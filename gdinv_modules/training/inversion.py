"""``invert``: one call that inverts a matrix (or a batch) by gradient descent."""

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Literal, Optional, Union

import pytorch_lightning as pl
import torch
from torch import Tensor

from gdinv_modules.core.errors import ConvergenceError, ConvergenceWarning
from gdinv_modules.core.functional import Formulation, default_tol
from gdinv_modules.nn.inverse_module import Init
from gdinv_modules.training.lit_inverse import LitInverse
from gdinv_modules.core.report import ConvergenceReport
from gdinv_modules.core.validation import check_finite, check_matrix, check_positive_int

__all__ = ["invert", "InverseResult"]


@dataclass
class InverseResult:
    """What :func:`invert` returns.

    Attributes:
        inverse: the approximate inverse, shape ``(..., n, n)``, on M's device and dtype.
        residual: per matrix, what ``tol`` bounds (the relative residual ``||XM - I||_F /
            sqrt(n)``, see :meth:`HeavyBallStepper.residual_at`), float64 on the CPU,
            shape ``(...)``.
        converged: whether each matrix reached the tolerance, shape ``(...)``.
        steps: per matrix, the first step at which it reached the tolerance, or the number of
            steps run where it did not (or where a ridge leaves no per-step record of the
            distance to its minimiser); shape ``(...)``.
        losses: the loss of every step (of every ``loss_every``-th), shape ``(kept, ...)``.
        report: the :class:`ConvergenceReport` (measured and predicted rates).
    """

    inverse: Tensor
    residual: Tensor
    converged: Tensor
    steps: Tensor
    losses: Tensor
    report: ConvergenceReport


def invert(
    matrix: Tensor,
    *,
    tol: Optional[float] = None,
    max_steps: int = 100_000,
    lr: Union[float, Literal["auto"]] = "auto",
    momentum: Union[float, Literal["auto"]] = "auto",
    formulation: Formulation = "left",
    init: Init = "zeros",
    seed: int = 314,
    steps_per_window: int = 100,
    loss_every: int = 1,
    ridge: float = 0.0,
    check_rank: bool = True,
    cuda_graph: bool = False,
    check: bool = False,
    **trainer_options: Any,
) -> InverseResult:
    r"""Invert ``matrix`` (shape ``(..., n, n)``) by heavy-ball gradient descent to ``tol``.

    A rank-deficient or rectangular ``(..., m, n)`` M gets its Moore-Penrose pseudo-inverse
    (from the default ``init="zeros"``) and a :class:`SingularMatrixWarning` where it lacks
    full rank; ``ridge`` adds Tikhonov regularisation (see :class:`LitInverse`).

    Runs :class:`LitInverse` under a quiet ``Trainer`` (no progress bar, logger or checkpoint
    unless ``trainer_options`` ask for them), on the GPU where there is one. ``tol`` bounds
    the relative residual, by default 1e-5 for float32 and 1e-10 for float64. A matrix that
    does not converge within ``max_steps`` is reported in the result and by a
    :class:`ConvergenceWarning`; ``check=True`` raises :class:`ConvergenceError` instead.
    The other options are :class:`LitInverse`'s.

    Example:
        >>> m = torch.tensor([[4.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
        >>> result = invert(m)
        >>> bool(result.converged), bool(result.residual <= 1e-10)
        (True, True)
        >>> torch.allclose(result.inverse, torch.linalg.inv(m), atol=1e-9)
        True
    """
    check_finite(check_matrix(matrix, square=formulation == "symmetric"))
    check_positive_int(max_steps, name="max_steps")
    tol = default_tol(matrix.dtype) if tol is None else tol
    model = LitInverse(
        matrix,
        lr=lr,
        momentum=momentum,
        formulation=formulation,
        init=init,
        seed=seed,
        steps_per_window=steps_per_window,
        loss_every=loss_every,
        tol=tol,
        ridge=ridge,
        check_rank=check_rank,
        cuda_graph=cuda_graph,
    )
    options: Dict[str, Any] = dict(
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="auto",
        devices=1,
        log_every_n_steps=1,
    )
    options.update(trainer_options)
    with _quiet_lightning():
        pl.Trainer(**options).fit(model)
    report = model.report()
    batch_shape = matrix.shape[:-2]
    converged = torch.tensor(report.converged).reshape(batch_shape)
    steps = torch.tensor(
        [report.steps if step is None else step for step in report.steps_to_tol]
    ).reshape(batch_shape)
    result = InverseResult(
        inverse=model.inverse.to(device=matrix.device, dtype=matrix.dtype),
        residual=torch.tensor(report.final_residual, dtype=torch.float64).reshape(batch_shape),
        converged=converged,
        steps=steps,
        losses=model.losses.cpu(),
        report=report,
    )
    if not bool(converged.all()):
        message = (
            f"{int((~converged).sum())} of {converged.numel()} matrices did not reach "
            f"tol={tol:g} in {report.steps} steps (largest residual "
            f"{max(report.final_residual):.3e}); see result.report for rates"
        )
        if check:
            raise ConvergenceError(message)
        warnings.warn(message, ConvergenceWarning, stacklevel=2)
    return result


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's informational logs and known-harmless warnings for one call."""
    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning.pytorch")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(LeafSpec|log_every_n_steps|litlogger).*")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
