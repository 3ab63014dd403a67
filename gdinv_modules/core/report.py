"""``ConvergenceReport``: how a run converged, measured, beside what the theory predicts."""

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from gdinv_modules.core.formulation import Formulation, as_formulation
from gdinv_modules.core.rank import loss_floor
from gdinv_modules.core.scaling import float_times_power_of_two
from gdinv_modules.core.theory import heavy_ball_rate, polyak_parameters

__all__ = ["ConvergenceReport", "measured_rate", "residual_history", "first_step_below"]

# An operator spectrum that is not M's is an SVD of an n^2 x n^2 matrix: small n only.
OPERATOR_SVD_MAX_N = 24
RESOLUTION_ULPS = 4  # a loss above a rank floor is known to this many ulps of the floor


def residual_history(losses: Tensor, n: int) -> Tensor:  # shape: (steps, ...) -> (steps, ...)
    r"""The relative residual :math:`\lVert E_t - I\rVert_F/\sqrt n = \sqrt{n L_t}` of every step.

    Example:
        >>> residual_history(torch.tensor([0.25, 0.0625]), 4).tolist()
        [1.0, 0.5]
    """
    return (losses.double() * n).sqrt()


def first_step_below(history: Tensor, tol: float) -> Tensor:  # (steps, ...) -> (...), -1 if never
    """The first step whose value is at most ``tol``, per matrix; -1 where there is none.

    Example:
        >>> first_step_below(torch.tensor([1.0, 0.1, 0.01]), 0.1).item()
        1
    """
    if len(history) == 0:
        return torch.full(history.shape[1:], -1, dtype=torch.int64)
    below = history <= tol
    found = below.any(dim=0)
    first = below.to(torch.int64).argmax(dim=0)
    return torch.where(found, first, torch.full_like(first, -1))


def measured_rate(
    residuals: Tensor,  # shape: (records, ...)
    tol: float,
    every: int = 1,
) -> Tensor:  # shape: (...)
    """The residual's contraction per step, fitted on the run's linear phase.

    The phase starts once the residual fell below a tenth of its first value (past the
    transient) and ends where it first reaches ``max(tol, 10 * its floor)`` (at the last
    record where that comes before the start: a run stopped short of any floor); the rate is
    ``exp(slope)`` of a least-squares line through log residual against step. NaN where the
    phase holds fewer than 3 records. Record ``i`` is step ``i * every``.

    Example:
        >>> round(measured_rate(0.5 ** torch.arange(40.0), 1e-9).item(), 6)
        0.5
    """
    steps = residuals.shape[0]
    if steps == 0:
        return torch.full(residuals.shape[1:], math.nan, dtype=torch.float64)
    flat = residuals.double().reshape(steps, -1).clamp_min(1e-300)
    index = torch.arange(steps, dtype=torch.float64)[:, None] * every
    start = first_step_below(flat / flat[0], 0.1).clamp_min(0)
    target = torch.maximum(torch.full_like(flat[0], tol), 10 * flat.min(dim=0).values)
    end = first_step_below(flat - target, 0.0)
    # a run stopped before any floor (at a hand-over, a budget) fits up to its last record
    end = torch.where((end < 0) | (end <= start), torch.full_like(end, steps - 1), end)
    inside = (index >= every * start[None]) & (index <= every * end[None])
    count = inside.sum(dim=0).double()
    log = flat.log()
    mean_t = (index * inside).sum(dim=0) / count.clamp_min(1)
    mean_y = (log * inside).sum(dim=0) / count.clamp_min(1)
    covariance = ((index - mean_t) * (log - mean_y) * inside).sum(dim=0)
    variance = ((index - mean_t).square() * inside).sum(dim=0)
    rate = (covariance / variance.clamp_min(1e-300)).exp()
    rate = torch.where(count >= 3, rate, torch.full_like(rate, math.nan))
    return rate.reshape(residuals.shape[1:])


@dataclass
class ConvergenceReport:
    r"""How a run converged, per matrix (lists follow the batch, flattened).

    ``predicted_rate`` is the heavy-ball rate of the final (lr, momentum) over the exact
    singular values (the nonzero ones of a rank-deficient M; with a ridge each
    :math:`\sigma^2` gains :math:`\lambda k^2`); ``polyak_rate`` the best any fixed pair could
    do, ``(kappa-1)/(kappa+1)``. For a rank-deficient M, rates and steps are those of the loss
    above its floor ``loss_floor``, resolved to 4 ulps of the floor in the loss's dtype: where
    ``tol`` asks for less, ``steps_to_tol`` is ``None`` (the loss cannot tell) while
    ``converged`` comes from the residual measured at the end. With a ridge the history holds
    no distance to the minimiser, so ``steps_to_tol`` and ``measured_rate`` are left out
    (``None``). ``lr`` and ``momentum`` are ``None`` where ``"auto"`` chose none, no descent
    step being taken (and the predicted rate with them). :func:`invert` adds the
    refinement steps it took after descent and why descent stopped (``descent_stop``:
    ``"tol"``, ``"stalled"`` at the dtype's floor, ``"budget"``: too slow for ``max_steps``,
    ``"max_steps"``, or ``"skipped"``: by M's spectrum, refinement's scaled restart took fewer
    steps).
    """

    tol: float
    steps: int
    converged: List[bool]
    steps_to_tol: List[Optional[int]]
    final_residual: List[float]
    measured_rate: List[Optional[float]]
    predicted_rate: List[Optional[float]]
    polyak_rate: List[Optional[float]]
    lr: List[Optional[float]]
    momentum: List[Optional[float]]
    sigma_max: List[Optional[float]]
    sigma_min: List[Optional[float]]
    rank: List[Optional[int]]
    loss_floor: List[float]
    ridge: float = 0.0
    refine_steps: int = 0
    descent_stop: str = ""

    @classmethod
    def from_run(
        cls,
        losses: Tensor,  # shape: (steps, ...)
        matrix: Tensor,  # shape: (..., n, n)
        formulation: Union[str, Formulation],
        lr: Tensor,  # shape: (...) or ()
        momentum: Tensor,  # shape: (...) or ()
        tol: float,
        final_residual: Tensor,  # shape: (...)
        *,
        rank: Optional[Tensor] = None,  # shape: (...)
        ridge: float = 0.0,
        singular_values: Optional[Tensor] = None,  # shape: (..., min(m, n)), M's, if known
        loss_every: int = 1,
        steps: Optional[int] = None,
        theory: bool = True,
    ) -> "ConvergenceReport":
        """The report of a run from its loss history: ``losses[i]`` is the loss before step
        ``i * loss_every`` (so ``steps_to_tol`` is the first *recorded* step at or below tol);
        ``steps``, the optimizer steps taken, defaults to ``len(losses) * loss_every``;
        ``theory=False`` leaves the predicted rates out where ``singular_values`` are not given
        (no SVD of M here)."""
        form = as_formulation(formulation)
        k = form.order(matrix.shape)
        batch = matrix.shape[:-2]
        count = math.prod(batch)
        floor = torch.zeros(batch, dtype=torch.float64) if rank is None else loss_floor(rank, k)
        floor = floor.cpu()
        # The loss resolves its excess over a floor only to the rounding of the floor: below
        # that the residual is unknown, not small (a difference of two equal losses is 0).
        resolution = RESOLUTION_ULPS * torch.finfo(losses.dtype).eps * floor
        excess = torch.maximum(losses.double().cpu() - floor, resolution)
        residuals = residual_history(excess, k)
        first = first_step_below(residuals, tol).reshape(-1)
        final = final_residual.double().reshape(-1).cpu()
        lr = torch.as_tensor(lr, dtype=torch.float64).expand(batch).reshape(-1).cpu()
        momentum = torch.as_tensor(momentum, dtype=torch.float64).expand(batch).reshape(-1).cpu()
        nan = torch.full_like(final, math.nan)
        sigma_max = sigma_min = predicted = polyak = rate = nan
        if not ridge:
            rate = measured_rate(residuals, tol, loss_every).reshape(-1)
        known = singular_values is not None and form.spectrum_is_ms
        if (theory or known) and (form.spectrum_is_ms or k <= OPERATOR_SVD_MAX_N):
            if singular_values is None or not form.spectrum_is_ms:
                singular_values = form.operator_singular_values(matrix)
            singular = singular_values.double().reshape(count, -1).cpu()
            # Drop M's zero singular values: those directions never move. (Where the operator's
            # spectrum is not M's, only a square M is allowed.)
            if rank is not None and form.spectrum_is_ms:
                kept = rank.reshape(count, 1).cpu().clamp_min(1)
                index = torch.arange(singular.shape[-1])[None, :]
                smallest = singular.gather(1, kept - 1)
                singular = torch.where(index < kept, singular, smallest)
            singular = (singular.square() + ridge * k * k).sqrt()
            sigma_max, sigma_min = singular[:, 0], singular[:, -1]
            predicted = heavy_ball_rate(singular, lr, momentum, k)
            polyak_lr, polyak_momentum = polyak_parameters(sigma_max, sigma_min, k)
            polyak = heavy_ball_rate(singular, polyak_lr, polyak_momentum, k)
        return cls(
            tol=tol,
            steps=int(losses.shape[0]) * loss_every if steps is None else steps,
            converged=(final <= tol).tolist(),
            steps_to_tol=[
                int(step) * loss_every if step >= 0 and not ridge else None
                for step in first.tolist()
            ],
            final_residual=final.tolist(),
            measured_rate=_optional(rate),
            predicted_rate=_optional(predicted),
            polyak_rate=_optional(polyak),
            lr=_optional(lr),
            momentum=_optional(momentum),
            sigma_max=_optional(sigma_max),
            sigma_min=_optional(sigma_min),
            rank=[None] * count if rank is None else rank.reshape(-1).tolist(),
            loss_floor=floor.reshape(-1).tolist(),
            ridge=ridge,
        )

    @classmethod
    def empty(cls, tol: float, batch_shape: Sequence[int] = ()) -> "ConvergenceReport":
        """The report of a run with nothing to do: an empty M, or an empty batch.

        Example:
            >>> ConvergenceReport.empty(1e-5, (2,)).converged
            [True, True]
        """
        count = math.prod(batch_shape)
        none: List[Optional[float]] = [None] * count
        return cls(
            tol=tol,
            steps=0,
            converged=[True] * count,
            steps_to_tol=[0] * count,
            final_residual=[0.0] * count,
            measured_rate=none,
            predicted_rate=none,
            polyak_rate=none,
            lr=none,
            momentum=none,
            sigma_max=none,
            sigma_min=none,
            rank=[0] * count,
            loss_floor=[0.0] * count,
            descent_stop="empty",
        )

    def of_unscaled_matrix(self, exponent: int) -> "ConvergenceReport":
        r"""This report of a run on :math:`2^e M`, told of M (:mod:`~gdinv_modules.core.scaling`):
        the learning rates times :math:`2^{2e}`, the singular values times :math:`2^{-e}`, the
        ridge times :math:`2^{-2e}`; the residuals, rates and steps are M's already.

        Example:
            >>> report = ConvergenceReport.empty(1e-5)
            >>> scaled = replace(report, lr=[0.5], sigma_max=[2.0], sigma_min=[None], ridge=1.0)
            >>> told = scaled.of_unscaled_matrix(-3)
            >>> told.lr, told.sigma_max, told.sigma_min, told.ridge
            ([0.0078125], [16.0], [None], 64.0)
        """
        if exponent == 0:
            return self
        return replace(
            self,
            lr=_times_power_of_two(self.lr, 2 * exponent),
            sigma_max=_times_power_of_two(self.sigma_max, -exponent),
            sigma_min=_times_power_of_two(self.sigma_min, -exponent),
            ridge=float_times_power_of_two(self.ridge, -2 * exponent),
        )

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def summary_lines(self) -> List[str]:
        """A few lines for the printed summary (the worst matrix where there is a batch)."""
        worst = max(range(len(self.final_residual)), key=lambda i: self.final_residual[i])
        rate = self.measured_rate[worst]
        predicted, polyak = self.predicted_rate[worst], self.polyak_rate[worst]
        converged = sum(self.converged)
        reached = [step for step in self.steps_to_tol if step is not None]
        deficient = [
            (index, rank)
            for index, (rank, floor) in enumerate(zip(self.rank, self.loss_floor, strict=True))
            if floor > 0
        ]
        singular = (
            [
                f"  singular M             {len(deficient)} matrix(es), e.g. rank {deficient[0][1]}"
                f", loss floor {self.loss_floor[deficient[0][0]]:.4g}"
            ]
            if deficient
            else []
        )
        return (
            singular
            + [
                f"  converged (tol {self.tol:.0e})  {converged} of {len(self.converged)}"
                + (f", the last at step {max(reached)}" if reached else ""),
            ]
            + (
                [
                    f"  rate per step          measured {_fmt(rate)}, theory {_fmt(predicted)} "
                    f"(Polyak's best {_fmt(polyak)})",
                    f"  lr, momentum           {_fmt(self.lr[worst], '.4g')}, "
                    f"{_fmt(self.momentum[worst], '.4g')}",
                ]
                if self.steps
                else [f"  rate per step          no descent step (Polyak's best {_fmt(polyak)})"]
            )
            + (
                [
                    f"  descent, refinement    {self.steps} steps ({self.descent_stop}), "
                    f"{self.refine_steps} refinement steps"
                ]
                if self.descent_stop
                else []
            )
        )


def _times_power_of_two(values: List[Any], exponent: int) -> List[Any]:
    """Each number times 2**exponent (inf past float64's range), ``None`` kept."""
    return [
        None if value is None else float_times_power_of_two(value, exponent) for value in values
    ]


def _optional(values: Tensor) -> List[Optional[float]]:
    return [None if math.isnan(value) else value for value in values.double().tolist()]


def _fmt(value: Optional[float], spec: str = ".5f") -> str:
    return "n/a" if value is None else format(value, spec)
