r"""``StoppingPolicy``: when descent stops, what it hands to refinement, and what a miss says.

One policy serves every way in: :func:`invert`, ``LitInverse`` under a Trainer (so
``train.py`` and a user's own Trainer) and the tracker's jump. A run under it:

1. **Windows of steps** (:meth:`StoppingPolicy.window`): ``"auto"`` windows grow with the run
   (:func:`window_length`: a power of 2, at most 2.5% of the steps so far, at least 4), so
   descent stops within ``max(4, 5%)`` steps of the step where every matrix got there, even
   where a check lands on an upswing of heavy ball's oscillating residual.
2. **The rank**, under ``check_rank="auto"`` (:func:`invert`'s default): a check whose
   residual shows :math:`\lVert I - XM\rVert_F < 1` proves XM invertible, so M of full rank
   (``left``; MX for ``right``; ``symmetric`` and a ridge take the check at once),
   and the rank check (an eigenvalue or singular value decomposition, a few steps' cost)
   is skipped. It runs first where refinement runs on a CPU M in its own wide dtype (float64,
   complex128), whose scaled restart then beats descent (:meth:`StoppingPolicy._rank_first`);
   elsewhere after :data:`RANK_PROOF_STEPS` steps where no check showed it
   (:data:`HOST_RANK_PROOF_STEPS` where it runs on the host, for a GPU's batch), or at an
   earlier check whose residual falls too slowly to show it by then.
3. **A check after each window** (:meth:`StoppingPolicy.after_window`, one host sync): the
   target (``tol``, or where refinement takes over), divergence, ``max_steps``, and from the
   residuals measured at the checks two verdicts: *stalled*, the residual stopped falling at
   the dtype's floor (heavy ball bottoms out near :math:`0.3\,\epsilon\,\kappa^2`), and
   *budget*, at the rate it falls ``tol`` lies well past ``max_steps``. Where refinement will
   run and M's spectrum is known from the rank check, descent is *skipped* when the theory
   says it cannot help (its floor for this condition number lies above 1, or Polyak's rate
   needs more than twice ``max_steps`` to reach the hand-over) or costs more: Polyak's rate
   needs more steps than refinement's restart, scaled by that spectrum, takes to the same
   place (:func:`~gdinv_modules.engine.refinement.scaled_steps`: about
   :math:`\log_2 \kappa` against :math:`(\kappa/2) \ln(4\sqrt k)`).
4. **The finish** (:meth:`StoppingPolicy.finish`): with ``refine`` on, for a square M of full
   rank without a ridge, descent stops once :math:`\lVert E - I\rVert_F \le 1/4` and
   refinement steps (:func:`~gdinv_modules.engine.refinement.refine`) square the residual down
   to the dtype's floor, on the formulation's own side (``right``: :math:`I - MX`;
   ``symmetric``'s residual is measured after steps on the left); they restart from a safe
   start where descent left it above 1 (a stall, a budget verdict) or was skipped, scaled by
   the rank check's singular values where it ran (a skip before any step takes the restart's
   first correction from the check's Gram matrix, not a product). A matrix that still misses
   ``tol`` gets a message naming the cause and the remedy that works for this M
   (:attr:`Outcome.message`).
"""

import math
from dataclasses import dataclass, replace
from typing import List, Literal, Optional, Tuple, Union

import torch
from torch import Tensor

from gdinv_modules.core.decomposition import on_host, wide_gram
from gdinv_modules.core.formulation import LEFT, SYMMETRIC
from gdinv_modules.core.functional import default_tol, wide_dtype, wide_residual
from gdinv_modules.core.report import ConvergenceReport
from gdinv_modules.engine.refinement import (
    MAX_REFINE_STEPS,
    one_side,
    refine,
    scaled_correction,
    scaled_steps,
)
from gdinv_modules.engine.stepper import HeavyBallStepper

__all__ = ["StoppingPolicy", "Stop", "Outcome", "Window", "window_length", "converge"]

Window = Union[int, Literal["auto"]]

SWITCH_RESIDUAL = 0.25  # ||I - X M||_F at which descent hands over to refinement
MIN_DECISION_STEPS = 256  # no stall or budget verdict before this many steps
STALL_GAIN = 2.0  # a residual that fell less than this over the last quarter of the run ...
EXPECTED_GAIN = 100.0  # ... where the tuner's theory expected this much, has stalled
BUDGET_MARGIN = 2.0  # stop when the predicted steps exceed the budget this many times
DESCENT_FLOOR = 0.3  # heavy ball's residual bottoms out near DESCENT_FLOOR * eps * kappa^2
# descent is skipped where a restart from M's singular values gets there for less: Polyak's
# steps to the hand-over above this many times the restart's scaled steps (a refinement step
# costs about a descent step in float64, 2 to 3 where its correction is wider than X)
RESTART_STEP_COST = 1.0
# check_rank="auto": the rank check runs after this many steps, unless a residual showed M's
# full rank first (a condition number up to about 3 gets there by then: benchmarks/RESULTS.md)
RANK_PROOF_STEPS = 8
# ... or at an earlier check where the residual, falling (in log) this many times as fast as it
# has since the first check, would still show nothing by then (the runs that showed it by step
# 8 fell at most 1.25 times as fast in their second window as in their first)
RANK_PROOF_SPEEDUP = 2.0
# ... or after this many where it runs on the host (a GPU's batch of matrices past 32 x 32),
# where it cost about 1000 of the batch's steps on an H200 (4096 x 64x64: 110 to 150 ms)
HOST_RANK_PROOF_STEPS = MIN_DECISION_STEPS


def window_length(steps: int) -> int:
    """The length of an ``"auto"`` window after ``steps`` descent steps: a power of 2, at most
    2.5% of ``steps`` and at least 4.

    Example:
        >>> [window_length(steps) for steps in (0, 100, 1000, 10_000)]
        [4, 4, 16, 128]
    """
    window = max(4, steps // 40)
    return 1 << (window.bit_length() - 1)


@dataclass
class Stop:
    """Why descent stopped: ``"tol"``, ``"stalled"``, ``"budget"``, ``"max_steps"``,
    ``"skipped"`` (the theory says descent cannot reach refinement's hand-over for this M), or
    ``"trainer"`` (a Trainer ended the fit: ``max_epochs``, ``max_time``, a callback)."""

    reason: str
    steps: int
    residual: float = math.nan  # the best largest residual seen at a check
    measured_rate: float = math.nan  # per step, over the last quarter of the run
    theory_rate: float = math.nan  # Polyak's rate for the tuner's estimate of kappa
    needed: float = math.nan  # steps still needed at the more hopeful of the two


@dataclass
class Outcome:
    """How a run under the policy ended.

    Attributes:
        report: the :class:`ConvergenceReport`, with the refinement steps and the stop.
        residual: per matrix, what ``tol`` bounds at the final X, float64 on the CPU.
        converged: per matrix, whether it reached ``tol`` (the dtype's where none was set).
        message: why a matrix missed ``tol`` and what to do; empty where all reached it (or
            no ``tol`` was set).
    """

    report: ConvergenceReport
    residual: Tensor
    converged: Tensor
    message: str


class StoppingPolicy:
    """The stopping rules of one run of a :class:`HeavyBallStepper` (module docstring).

    Args:
        stepper: the stepper that takes the steps.
        tol: the tolerance on the residual; ``None``: no stop before ``max_steps``, no verdicts
            (the post's fixed-length runs).
        max_steps: the most descent steps (``None``: no bound; a Trainer may bound the run).
        refine: end with refinement steps where M allows them (square, full rank, no ridge).
        window: the steps per window, or ``"auto"`` (growing windows).

    Example:
        >>> from gdinv_modules.engine.options import StepOptions
        >>> from gdinv_modules.nn.inverse_module import InverseModule
        >>> m = torch.tensor([[4.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
        >>> stepper = HeavyBallStepper(InverseModule(m, init="zeros"), StepOptions("auto", "auto"))
        >>> outcome = converge(StoppingPolicy(stepper, tol=1e-12, max_steps=1000, refine=True))
        >>> outcome.report.descent_stop, bool(outcome.converged), outcome.message
        ('tol', True, '')
    """

    def __init__(
        self,
        stepper: HeavyBallStepper,
        *,
        tol: Optional[float],
        max_steps: Optional[int],
        refine: bool = False,
        window: Window = "auto",
    ) -> None:
        self.stepper = stepper
        self.tol = tol
        self.max_steps = max_steps
        self.refine = refine
        self.window_option = window
        self.refinable = False
        self.target = tol
        self._skip = False  # descent cannot help, or costs more: straight to refinement
        # shape: (..., n, n): a skipped descent's scaled restart's first correction, from the
        # rank check's Gram matrix, held until the finish (no window comes before it)
        self._start: Optional[Tensor] = None
        # check_rank="auto": the rank check waits for the first checks' residuals
        self._rank_pending = stepper.options.check_rank == "auto" and stepper.matrix_rank is None
        self._begun = False
        self._record: List[Tuple[int, float]] = []  # (step, best largest residual) per check

    def begin(self, *, world_size: int = 1, global_rank: int = 0) -> None:
        """Start the stepper (:meth:`HeavyBallStepper.start`'s ``world_size`` and
        ``global_rank``) and set the descent's target: ``tol``, or where refinement takes over
        (``max(tol, 1/(4 sqrt k))``) where it will run; once (later calls do nothing)."""
        if self._begun:
            return
        self._begun = True
        stepper = self.stepper
        formulation = stepper.module.formulation
        first = self._rank_pending and (
            self.tol is None
            or stepper.ridge
            or not formulation.spectrum_is_ms  # (XM + MX)/2 = I/2 for a singular M
            or self._rank_first()
        )  # no residual of the run can show the rank, or the check pays for itself
        gram = None
        if stepper.matrix_rank is None and (first or stepper.options.check_rank is True):
            gram = self._restart_gram()
        # a check run as the stepper starts comes before the tuner, which then takes sigma_max
        # from the singular values; a stepper started before checks here
        stepper.start(
            world_size=world_size,
            global_rank=global_rank,
            find_rank=first and not stepper.started,
            gram=gram,
        )
        if first:
            gram = self._find_rank(gram)
        self._set_target(gram)

    def _restart_gram(self) -> Optional[Tensor]:  # shape: (..., n, n)
        """M's Gram matrix in the wide dtype, for the rank check, where a skipped descent's
        scaled restart could take its first correction from it (``left``, on M's device: one
        product fewer); ``None`` where none could. Only where M's dtype is its own wide one:
        a float32 M's float64 Gram matrix is two copies of M, held through the check's SVD
        where its eigenvalues do not suffice (9 copies at the peak, against 7)."""
        stepper = self.stepper
        matrix = stepper.matrix
        if not (
            self.refine
            and self.tol is not None
            and self.invertible
            and stepper.module.formulation is LEFT
            and matrix.dtype == wide_dtype(matrix.dtype)
            and not on_host(matrix)
        ):
            return None
        return wide_gram(matrix)

    def _set_target(self, gram: Optional[Tensor] = None) -> None:
        """The descent's target, and whether refinement runs, as M's rank is known so far;
        ``gram``: M's, where the rank check just took it (:meth:`_restart_gram`), made into the
        scaled restart's first correction where descent is skipped."""
        self.refinable = self.refine and self.invertible
        k = self.stepper.module.order
        self.target = self.tol
        self._start = None
        if self.tol is not None and self.refinable:
            self.target = max(self.tol, SWITCH_RESIDUAL / math.sqrt(k))
            self._skip = self._skip_descent(self.target)
            singular = self.stepper.singular_values
            if self._skip and gram is not None and singular is not None:
                self._start = scaled_correction(gram, singular, self.stepper.module.inverse)

    def _rank_first(self) -> bool:
        """Whether ``check_rank="auto"`` runs the rank check before the first step, as
        ``True`` does: where refinement will run on a CPU M in its own wide dtype (float64,
        complex128), whose refinement steps cost what descent's do, the scaled restart its
        singular values allow took 0.49 to 0.90 of the time of descent and refinement (n 64
        to 1024 and batches from a condition number of 1.5 on, n 8 from 4; below that tiny
        matrices lose about 1 ms: benchmarks/RESULTS.md)."""
        matrix = self.stepper.matrix
        return (
            self.refine
            and self.invertible
            and matrix.device.type == "cpu"
            and matrix.dtype == wide_dtype(matrix.dtype)
        )

    def _find_rank(self, gram: Optional[Tensor] = None) -> Optional[Tensor]:
        """The rank check ``check_rank="auto"`` put off (:meth:`HeavyBallStepper.find_rank`),
        without the last check's product (its memory serves the decomposition), from ``gram``
        or :meth:`_restart_gram`'s; where M lacks full rank, the tuner's estimate of the
        smallest singular value starts again, measured from now on against the projector the
        product tends to. Returns the Gram matrix the check took (``gram`` where the stepper
        found the rank as it started)."""
        stepper = self.stepper
        self._rank_pending = False
        if stepper.matrix_rank is not None:  # found as the stepper started
            return gram
        stepper.offer_product(None)
        if gram is None:
            gram = self._restart_gram()
        stepper.find_rank(gram=gram)
        tuner = stepper.tuner
        if stepper.target is not None and tuner is not None:
            tuner.sigma_min_sq, tuner.next_step = None, stepper.steps
        return gram

    def _rank_shown(self, reached: bool) -> bool:
        r"""Under ``check_rank="auto"``, after a check: M's full rank is recorded where the
        check's residual shows it (:math:`\lVert I - XM\rVert_F < 1`: XM is invertible), and
        the rank check runs where it does not by the end of the first
        :data:`RANK_PROOF_STEPS` steps (:data:`HOST_RANK_PROOF_STEPS` where the check runs on
        the host), earlier where the residual falls too slowly to show it by then
        (:meth:`_proof_in_reach`), or before a stop at ``tol``. Whether the check ran now."""
        stepper = self.stepper
        if not self._rank_pending:
            return False
        if stepper.worst_residual * math.sqrt(stepper.module.order) < 1:
            self._rank_pending = False
            stepper.assume_full_rank()
            return False
        wait = HOST_RANK_PROOF_STEPS if on_host(stepper.matrix) else RANK_PROOF_STEPS
        if stepper.steps < wait and not reached and self._proof_in_reach(wait):
            return False
        self._set_target(self._find_rank())
        return True

    def _proof_in_reach(self, wait: int) -> bool:
        r"""Whether the residual could still show M's full rank by step ``wait``: falling
        :data:`RANK_PROOF_SPEEDUP` times as fast (in log) as it has since the first check, it
        would reach :math:`\lVert I - XM\rVert_F < 1` (``True`` before a first check)."""
        stepper = self.stepper
        if not self._record:
            return True
        first_step, first = self._record[0]
        steps, now = stepper.steps, stepper.worst_residual
        if steps <= first_step or not 0 < now < math.inf:
            return True
        fall = math.log(first / now) / (steps - first_step)  # per step, in log
        reach = math.log(now) - RANK_PROOF_SPEEDUP * max(fall, 0.0) * (wait - steps)
        return reach < -0.5 * math.log(stepper.module.order)

    def _skip_descent(self, target: float) -> bool:
        """Whether, by the exact spectrum, descent's floor lies above 1, or Polyak's rate
        needs more than ``BUDGET_MARGIN * max_steps`` steps to ``target``, or more than
        ``RESTART_STEP_COST`` times the scaled steps refinement's restart takes
        (:func:`~gdinv_modules.engine.refinement.scaled_steps`)."""
        stepper = self.stepper
        singular = stepper.singular_values
        if singular is None or not stepper.module.formulation.spectrum_is_ms:
            return False
        kappa = (singular[..., 0] / singular[..., -1]).max().item()
        eps = torch.finfo(stepper.module.inverse.dtype).eps
        if not math.isfinite(kappa) or DESCENT_FLOOR * eps * kappa**2 > 1:
            return True
        rate = (kappa - 1) / (kappa + 1)
        needed = math.log(target) / math.log(rate) if 0 < rate < 1 else 0.0
        if self.max_steps is not None and needed > BUDGET_MARGIN * self.max_steps:
            return True
        return needed > RESTART_STEP_COST * scaled_steps(kappa)

    @property
    def invertible(self) -> bool:
        """Whether refinement applies to M: square, of full rank (as far as the rank check
        knows), without a ridge."""
        stepper = self.stepper
        rows, cols = stepper.module.matrix_shape
        return rows == cols and not stepper.ridge and stepper.target is None

    def window(self) -> int:
        """The steps of the next window: none where descent is skipped (the check after it
        stops the run before a step)."""
        if self._skip:
            return 0
        steps = self.stepper.steps
        length = window_length(steps) if self.window_option == "auto" else self.window_option
        if self.max_steps is not None:
            length = min(length, self.max_steps - steps)
        return max(length, 0)

    def start_from_zeros(self) -> Optional[Stop]:
        """:meth:`after_window` before the first window from X = 0: for an invertible M and no
        ridge its residual is 1, known without a product, and the first step's loss and
        gradient need none (:meth:`HeavyBallStepper.offer_zero_start`)."""
        if not self.invertible:
            return self.after_window()
        self.stepper.offer_zero_start()
        self._record.append((0, 1.0))
        return Stop("skipped", 0, 1.0) if self._skip else None

    def after_window(self) -> Optional[Stop]:
        """Check the run after a window (one host sync): a :class:`Stop`, or ``None`` to go on.

        Raises:
            DivergenceError: the loss is not finite, or grew without bound.
        """
        stepper = self.stepper
        reached = stepper.check(self.target)
        if self._rank_shown(reached) and stepper.target is not None:
            return None  # M lacks full rank: its residuals are the projector's from now on
        best = min(stepper.worst_residual, self._record[-1][1] if self._record else math.inf)
        self._record.append((stepper.steps, best))
        if reached:
            return Stop("tol", stepper.steps, best)
        if self._skip:
            return Stop("skipped", stepper.steps, best)
        if self.max_steps is not None and stepper.steps >= self.max_steps:
            return Stop("max_steps", stepper.steps, best, *self._rates())
        if self.target is None:
            return None
        return self._verdict()

    def _last_quarter(self) -> Tuple[int, float, int, float]:
        """The step and best residual of the last check, and the span and best residual of
        the last quarter of the run before it."""
        steps, best = self._record[-1]
        then_step, then_best = next((s, r) for s, r in self._record if s >= steps - steps // 4)
        return steps, best, steps - then_step, then_best

    def _rates(self) -> Tuple[float, float, float]:
        """The measured rate over the last quarter of the run, the theory's for the tuner's
        kappa, and the steps still needed at the more hopeful of the two."""
        _, best, span, then_best = self._last_quarter()
        measured = theory = math.nan
        if span > 0 and best > 0 and then_best > 0:
            measured = (then_best / best) ** (-1 / span)
        tuner = self.stepper.tuner
        if tuner is not None and tuner.sigma_min_sq is not None:
            # Polyak's rate for the tuner's estimates: the smallest singular value is never
            # underestimated, so no slower than the run's own can become.
            theory = (tuner.condition - 1) / (tuner.condition + 1)
        hopeful = min(r for r in (measured, theory, math.inf) if not math.isnan(r))
        target = self.target if self.target is not None else math.nan
        needed = math.inf
        if 0 < hopeful < 1 and best > 0:
            needed = max(math.log(target / best) / math.log(hopeful), 0.0)
        return measured, theory, needed

    def _verdict(self) -> Optional[Stop]:
        steps, best, span, then_best = self._last_quarter()
        if (
            steps < MIN_DECISION_STEPS
            or span < MIN_DECISION_STEPS // 4
            or not (best > 0 and then_best > 0)
        ):
            return None
        measured, theory, needed = self._rates()
        if not math.isnan(theory) and then_best / best < STALL_GAIN:
            if theory**span <= 1 / EXPECTED_GAIN:
                return Stop("stalled", steps, best, measured, theory, needed)
        if self.max_steps is not None and steps >= self.max_steps / 50:
            if needed > BUDGET_MARGIN * (self.max_steps - steps):
                return Stop("budget", steps, best, measured, theory, needed)
        return None

    @torch.no_grad()
    def finish(self, stop: Optional[Stop]) -> Outcome:
        """Refine where it applies (X is written into the module), measure the final residual
        in the wide dtype and write the report; ``stop``: the last :meth:`after_window`'s
        (``None``: a Trainer ended the fit). Refinement starts from the last check's product
        where one was kept (:meth:`HeavyBallStepper.keeping_products`)."""
        stepper = self.stepper
        module = stepper.module
        stop = stop or Stop("trainer", stepper.steps, *self._best())
        refine_steps = 0
        start, self._start = self._start, None
        if self.refinable:
            checked = stepper.take_checked_correction()  # C at X, from the last check
            wide = checked is not None and checked.dtype == wide_dtype(checked.dtype)
            refined, refine_steps, residual = self._refine(
                module.inverse.detach(),
                current=checked if wide else None,
                rough=None if wide else checked,
                start_over=stop.reason == "skipped",
                start=start if stop.reason == "skipped" else None,
            )
            del checked, start
            module.inverse.copy_(refined)
        else:
            residual = self._final_residual()
        judged = self.tol if self.tol is not None else default_tol(module.inverse.dtype)
        converged = residual <= judged
        report = replace(
            stepper.report(judged, residual),
            converged=converged.reshape(-1).tolist(),
            refine_steps=refine_steps,
            descent_stop=stop.reason,
        )
        batch_shape = module.batch_shape
        message = ""
        if self.tol is not None and not bool(converged.all()):
            message = (
                f"{int((~converged).sum())} of {converged.numel()} matrices did not reach "
                f"tol={self.tol:g} (largest residual {residual.max().item():.3e}) after "
                f"{report.steps} descent steps"
                + (f" and {refine_steps} refinement steps" if self.refinable else "")
                + f": {self._advice(stop, report, refine_steps)}"
            )
        return Outcome(
            report, residual.reshape(batch_shape), converged.reshape(batch_shape), message
        )

    def _best(self) -> Tuple[float, ...]:
        if not self._record:
            return ()
        return (self._record[-1][1], *self._rates())

    def _final_residual(self) -> Tensor:  # shape: (...), float64 on the CPU
        """What ``tol`` bounds at the final X, measured in the wide dtype."""
        stepper = self.stepper
        if stepper.ridge:
            return stepper.residual_at().double().cpu()
        module = stepper.module
        return wide_residual(
            module.inverse.detach(), module.resolve_matrix(), module.formulation, stepper.target
        ).cpu()

    def _kappa(self, report: ConvergenceReport) -> Optional[float]:
        """The largest condition number in the batch: exact where the report knows the
        spectrum, else the tuner's estimate."""
        pairs = [
            (high, low)
            for high, low in zip(report.sigma_max, report.sigma_min, strict=True)
            if high is not None and low is not None and low > 0
        ]
        if pairs:
            return max(high / low for high, low in pairs)
        tuner = self.stepper.tuner
        return tuner.condition if tuner is not None and math.isfinite(tuner.condition) else None

    def _advice(self, stop: Stop, report: ConvergenceReport, refine_steps: int) -> str:
        """The cause of a miss and the remedy that works for this M (never one in effect)."""
        dtype = self.stepper.module.inverse.dtype
        eps, wide = torch.finfo(dtype).eps, wide_dtype(dtype)
        kappa = self._kappa(report)
        name, wide_name = _name(dtype), _name(wide)
        about = "" if kappa is None else f" (condition number {kappa:.3g})"
        tol = self.tol if self.tol is not None else math.nan
        wide_eps = torch.finfo(wide).eps
        if self.refinable:  # refinement ran and stopped short: how X is stored limits it
            if refine_steps >= MAX_REFINE_STEPS:
                return f"refinement ran out of its {MAX_REFINE_STEPS} steps; see the report"
            floor = f"refinement stopped at the rounding of X in {name} for this M{about}"
            module = self.stepper.module
            if module.formulation is SYMMETRIC:  # the left residual is at the floor: measured
                left = wide_residual(module.inverse.detach(), module.resolve_matrix()).max()
                if left.item() <= tol:
                    return (
                        f"{floor}: it leaves XM - I there, and MX - I, which the symmetric "
                        "residual averages in, up to the condition number times larger; "
                        f"formulation='left' reaches {left.item():.1e} here"
                    )
            if wide != dtype:
                estimate = "" if kappa is None else f": about {wide_eps * kappa:.1e}"
                return f"{floor}; convert M to {wide_name}, whose floor is far lower{estimate}"
            return (
                f"{floor}, near eps * kappa = {eps * (kappa or math.nan):.1e}: regularise with "
                "ridge > 0 (Tikhonov), or ask for a looser tol"
            )
        remedies = self._measured_refinement(tol)
        if stop.reason == "stalled":
            cause = f"the residual stopped falling at {stop.residual:.2e}: {name}'s floor{about}"
            if wide != dtype:
                remedies.append(f"convert M to {wide_name}")
            if not remedies:
                remedies.append(
                    "no wider dtype helps: regularise with ridge > 0 (Tikhonov), which bounds "
                    "the condition number"
                )
            return f"{cause}; " + ", or ".join(remedies)
        if stop.reason == "trainer":
            cause = (
                f"the Trainer ended the fit at step {stop.steps} (max_epochs, max_time or a "
                "callback) before tol"
            )
            return f"{cause}; " + ", or ".join(["let it run longer", *remedies])
        rates = f"at the measured rate of {stop.measured_rate:.6f} per step"
        if not math.isnan(stop.theory_rate):
            rates += f" (the theory's best for this M: {stop.theory_rate:.6f})"
        cause = f"{rates} it needs about {stop.needed:.3g} more steps"
        if stop.reason == "max_steps":
            cause = f"max_steps={self.max_steps} ran out; {cause}"
        else:
            cause += f", past max_steps={self.max_steps}: M is too ill-conditioned for this budget"
        descent_floor = None if kappa is None else DESCENT_FLOOR * eps * kappa**2
        if (descent_floor is None or descent_floor < tol) and math.isfinite(stop.needed):
            remedies.append(f"raise max_steps to about {stop.steps + stop.needed:.2g}")
        elif wide != dtype:
            remedies.append(
                f"convert M to {wide_name} (descent's floor in {name} is near "
                f"{descent_floor:.1e} for this M)"
            )
        if stop.reason == "budget" or not remedies:
            remedies.append(
                "regularise with ridge > 0 (Tikhonov), which bounds the condition number"
            )
        return f"{cause}{about}; " + ", or ".join(remedies)

    def _measured_refinement(self, tol: float) -> List[str]:
        """``refine=True`` as a remedy, where it is off and M allows it, measured: refinement
        from a copy of the final X (or its safe start) reaches tol here."""
        if self.refine or not self.invertible:
            return []
        _, steps, residual = self._refine(self.stepper.module.inverse.detach().clone())
        reached = residual.max().item()
        if reached > tol:
            return []
        return [f"refine=True, which reaches {reached:.1e} here ({steps} refinement steps)"]

    def _refine(
        self,
        inverse: Tensor,
        *,
        current: Optional[Tensor] = None,
        rough: Optional[Tensor] = None,
        start_over: bool = False,
        start: Optional[Tensor] = None,
    ) -> Tuple[Tensor, int, Tensor]:
        """:func:`refine` from X (its memory serves the steps) on the formulation's side:
        ``right`` refines :math:`MX - I`, ``left`` and ``symmetric`` :math:`XM - I` (no step
        squares the symmetric product's residual; it is measured apart, one product more),
        with the rank check's singular values where it ran (a restart's scaled start).
        ``current``, ``rough``, ``start_over``, ``start``: ``refine``'s. The refined X, the
        steps taken, and per matrix what ``tol`` bounds at X (float64 on the CPU)."""
        module = self.stepper.module
        formulation, matrix = module.formulation, module.resolve_matrix()
        refinement = refine(
            inverse,
            matrix,
            formulation=one_side(formulation),
            current=current,
            rough=rough,
            singular_values=self.stepper.singular_values,
            start_over=start_over,
            start=start,
        )
        if formulation is SYMMETRIC:
            residual = wide_residual(refinement.inverse, matrix, formulation)
        else:
            residual = refinement.residual.real.double()
        return refinement.inverse, refinement.steps, residual.cpu()


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def converge(policy: StoppingPolicy, *, from_zeros: bool = False) -> Outcome:
    """Run the policy's stepper to a stop and finish: the loop of :func:`invert` and the
    tracker's jump (a Trainer runs the same steps through ``LitInverse``). ``from_zeros``: X
    starts at 0, whose residual is 1, so the first check comes after the first window (a
    product saved) rather than before it."""
    policy.begin()
    # Nothing but these steps moves X here: each window, and refinement, start from the
    # product its check measured.
    with policy.stepper.keeping_products():
        stop = policy.start_from_zeros() if from_zeros else policy.after_window()
        while stop is None:
            policy.stepper.run(policy.window())
            stop = policy.after_window()
        policy.stepper.optimizer.state.clear()  # descent is over: its memory serves refinement
        return policy.finish(stop)
