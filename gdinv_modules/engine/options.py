"""``StepOptions``: how :class:`HeavyBallStepper` steps, shared by ``invert``, ``LitInverse``
and the stepper itself (one definition, checked once)."""

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, Mapping, Sequence, Union

from gdinv_modules.core.errors import InvalidOptionError
from gdinv_modules.core.scaling import float_times_power_of_two
from gdinv_modules.core.validation import (
    check_choice,
    check_known,
    check_momentum,
    check_non_negative_float,
    check_positive_float,
    check_positive_int,
)
from gdinv_modules.engine.sharding import SHARD_MODES, ShardMode

__all__ = ["StepOptions", "Auto"]

Auto = Literal["auto"]


@dataclass(frozen=True)
class StepOptions:
    r"""The options of the heavy-ball steps; every value is checked when the object is made.

    Attributes:
        lr: the learning rate :math:`\eta > 0`, or ``"auto"`` (:class:`HeavyBallTuner`).
        momentum: the momentum :math:`0 \le \beta < 1`, or ``"auto"``.
        ridge: the Tikhonov weight :math:`\lambda \ge 0` of the loss; the residual that
            ``tol`` bounds becomes a bound on the relative distance to its minimiser.
        loss_every: keep the loss of every ``loss_every``-th step only (:class:`LossHistory`).
        check_rank: ``True``: M's singular values at the start, in float64 (its singular
            vectors too where it lacks full rank); a rank-deficient M gets a
            :class:`SingularMatrixWarning`, and its residual is measured against the projector
            the product tends to. ``"auto"``: the same check, left to the
            :class:`~gdinv_modules.engine.policy.StoppingPolicy`, which skips it where the
            first steps show M's full rank (:math:`\lVert I - XM\rVert_F < 1`), and runs it
            first where refinement runs on a CPU M in float64 or complex128 (the restart its
            singular values allow costs less than descent there); a stepper run without a
            policy then takes none. ``False``: none.
        shard: how the ranks of a distributed run split the steps: ``"batch"`` (each rank a
            slice of the batch; the columns where there are fewer matrices than ranks),
            ``"columns"`` or ``"none"`` (:class:`Sharding`).
        cuda_graph: on a CUDA device, record a window of steps once in a CUDA graph and replay
            it (:class:`StepGraph`); ignored elsewhere and under a column split.

    Example:
        >>> StepOptions(lr="auto").auto
        True
        >>> StepOptions.from_mapping({"lr": 0.5, "moment": 0.1}, owner="invert()")
        Traceback (most recent call last):
        ...
        gdinv_modules.core.errors.InvalidOptionError: invert() has no option 'moment'; did ...
    """

    lr: Union[float, Auto] = 0.9
    momentum: Union[float, Auto] = 0.9
    ridge: float = 0.0
    loss_every: int = 1
    check_rank: Union[bool, Auto] = True
    shard: ShardMode = "batch"
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        if self.lr != "auto":
            check_positive_float(self.lr, name="lr (a number, or 'auto')")
        if self.momentum != "auto":
            check_momentum(self.momentum, name="momentum (a number, or 'auto')")
        check_non_negative_float(self.ridge, name="ridge")
        check_positive_int(self.loss_every, name="loss_every")
        check_choice(self.shard, SHARD_MODES, name="shard")
        if not (isinstance(self.check_rank, bool) or self.check_rank == "auto"):
            raise InvalidOptionError(
                f"check_rank must be True, False or 'auto', got {self.check_rank!r}"
            )

    @property
    def auto(self) -> bool:
        """Whether lr or momentum is chosen automatically."""
        return "auto" in (self.lr, self.momentum)

    def for_scaled_matrix(self, exponent: int) -> "StepOptions":
        r"""These options for :math:`2^e M` (:mod:`~gdinv_modules.core.scaling`): a fixed lr
        times :math:`2^{-2e}`, the ridge times :math:`2^{2e}`, so the steps are M's.

        Example:
            >>> StepOptions(lr=0.5, ridge=1e-3).for_scaled_matrix(1).lr
            0.125
        """
        lr = (
            self.lr
            if self.lr == "auto"
            else float_times_power_of_two(float(self.lr), -2 * exponent)
        )
        ridge = float_times_power_of_two(self.ridge, 2 * exponent)
        if lr in (0.0, math.inf) or ridge == math.inf or (ridge == 0) != (self.ridge == 0):
            raise InvalidOptionError(
                f"lr={self.lr} and ridge={self.ridge} are past float64's range for this M scaled "
                f"by 2**{exponent} to what the steps hold: use lr='auto', or scale M yourself"
            )
        return replace(self, lr=lr, ridge=ridge)

    @classmethod
    def names(cls) -> Sequence[str]:
        """The option names, in order."""
        return [field.name for field in fields(cls)]

    @classmethod
    def from_mapping(
        cls, options: Mapping[str, Any], *, owner: str, also: Sequence[str] = ()
    ) -> "StepOptions":
        """The options among ``options``; a name that is neither one of them nor in ``also``
        (the caller's own) is refused with the closest name."""
        check_known(options, [*cls.names(), *also], owner=owner)
        return cls(**{name: value for name, value in options.items() if name in cls.names()})
