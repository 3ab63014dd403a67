"""HeavyBallStepper without a Trainer: the same steps as LitInverse, bit for bit."""

import pytest
import torch
from conftest import first_below, quiet_trainer
from torch.utils._python_dispatch import TorchDispatchMode

from gdinv_modules import (
    DivergenceError,
    HeavyBallStepper,
    InverseModule,
    LitInverse,
    NotReadyError,
    SingularMatrixWarning,
    StepOptions,
    conditioned_matrix,
    invert,
)
from gdinv_modules.core.errors import InvalidOptionError
from gdinv_modules.core.matrices import low_rank_matrix, spd_matrix
from gdinv_modules.engine.policy import StoppingPolicy, converge

AUTO = StepOptions(lr="auto", momentum="auto")


def test_the_posts_run_without_a_trainer(m1):
    stepper = HeavyBallStepper(InverseModule(m1), StepOptions(lr=0.9, momentum=0.9))
    for _ in range(100):
        stepper.run(100)
    losses = stepper.history.losses
    assert stepper.steps == len(losses) == 10_000
    assert (first_below(losses, 1e-8), first_below(losses, 1e-12)) == (499, 785)


@pytest.mark.parametrize("options", [{}, {"lr": "auto", "momentum": "auto", "ridge": 1e-3}])
def test_the_same_trajectory_as_lit_inverse_bit_for_bit(options):
    matrix = spd_matrix(8, condition=20.0, batch_shape=(3,), dtype=torch.float64)
    options = {"lr": 0.1, "momentum": 0.5, **options}
    model = LitInverse(matrix, init="zeros", **options)
    quiet_trainer(max_steps=700).fit(model)
    stepper = HeavyBallStepper(InverseModule(matrix, init="zeros"), StepOptions(**options))
    for size in (300, 1, 399):  # any windows: the trajectory does not depend on them
        stepper.run(size)
    assert torch.equal(stepper.history.losses, model.losses)
    assert torch.equal(stepper.module.inverse, model.module.inverse)


def test_a_state_dict_continues_the_same_trajectory():
    matrix = spd_matrix(6, condition=50.0, dtype=torch.float64)
    whole = HeavyBallStepper(InverseModule(matrix), AUTO)
    whole.run(400)
    half = HeavyBallStepper(InverseModule(matrix), AUTO)
    half.run(200)
    module = InverseModule(matrix)
    module.load_state_dict(half.module.state_dict())
    resumed = HeavyBallStepper(module, AUTO)
    resumed.load_state_dict(half.state_dict())
    resumed.run(200)
    assert resumed.steps == 400
    assert torch.equal(resumed.history.losses, whole.history.losses)
    assert torch.equal(resumed.module.inverse, whole.module.inverse)


def test_check_stops_at_tol_and_measures_the_residual_against_inv():
    matrix = spd_matrix(16, condition=10.0, dtype=torch.float64)
    stepper = HeavyBallStepper(InverseModule(matrix, init="zeros"), AUTO)
    windows = 0
    while not stepper.check(1e-10):
        stepper.run(10)
        windows += 1
    stepper.measure()
    assert stepper.residual.item() <= 1e-10
    assert stepper.residual_at(stepper.module()).item() == stepper.residual.item()
    torch.testing.assert_close(
        stepper.module.inverse.detach(), torch.linalg.inv(matrix), atol=1e-9, rtol=0
    )
    # the window before the last had not converged
    assert (
        windows * 10 == stepper.steps and stepper.report(1e-10).steps_to_tol[0] > stepper.steps - 10
    )


def test_check_refuses_divergence_naming_the_stable_bound():
    stepper = HeavyBallStepper(
        InverseModule(spd_matrix(4, condition=10.0)), StepOptions(lr=10.0, momentum=0.5)
    )
    stepper.run(100)
    with pytest.raises(DivergenceError, match=r"diverged at step 100.*lr < \(1 \+ momentum\)"):
        stepper.check(1e-5)


def test_a_singular_matrix_warns_once_at_start():
    stepper = HeavyBallStepper(InverseModule(low_rank_matrix(5, 3, dtype=torch.float64)))
    with pytest.warns(SingularMatrixWarning, match="rank 3 of 5"):
        stepper.run(1)
    assert stepper.matrix_rank.item() == 3


def test_the_stepper_needs_a_module_that_holds_m():
    with pytest.raises(NotReadyError, match="holds M"):
        HeavyBallStepper(InverseModule(size=3))
    with pytest.raises(InvalidOptionError, match="lr"):
        HeavyBallStepper(InverseModule(torch.eye(2)), StepOptions(lr=-1.0))
    with pytest.raises(InvalidOptionError, match="no option 'moment'; did you mean 'momentum'"):
        StepOptions.from_mapping({"moment": 0.5}, owner="HeavyBallStepper")


class _Products(TorchDispatchMode):
    """Adds up matrix products' multiply-adds, in units of one product of ``unit`` (a
    product taken a block of rows at a time counts once in all; one written in place, by
    ``addmm_`` or ``baddbmm_``, counts as any other)."""

    def __init__(self, unit: torch.Tensor) -> None:
        super().__init__()
        self.unit, self.count = unit.numel() * unit.shape[-1], 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        aten = torch.ops.aten
        out = func(*args, **(kwargs or {}))
        added = (aten.addmm, aten.baddbmm, aten.addmm_, aten.baddbmm_)
        if func.overloadpacket in (aten.mm, aten.bmm, *added):
            left = args[1] if func.overloadpacket in added else args[0]
            self.count += out.numel() * left.shape[-1] / self.unit
        return out


@pytest.mark.parametrize("dtype, check_rank", [(torch.float64, False), (torch.float32, "auto")])
def test_invert_takes_the_products_its_steps_need(dtype, check_rank, monkeypatch):
    # Two a step, descent's or refinement's, but none for the first from X = 0 (E = 0, its
    # gradient -2 M^H / k^2); one more for the last X's correction, and the tuner's Gram
    # matrix. Each check of descent measures E, which the next window's first step takes as
    # its product, or the last one refinement as its first correction (for a float32 M a
    # rough one, far above its rounding here: refinement's first step from it).
    checks = []
    measure = HeavyBallStepper.measure
    monkeypatch.setattr(HeavyBallStepper, "measure", lambda self: checks.append(1) or measure(self))
    matrix = conditioned_matrix(48, condition=2.25, batch_shape=(2,), dtype=dtype)
    with _Products(matrix) as products:
        result = invert(matrix, check_rank=check_rank)
    steps = result.report.steps + result.report.refine_steps
    assert result.report.refine_steps > 0 and len(checks) >= 2  # windows after a check
    assert products.count == 2 * (steps - 1) + 1 + 1


def test_a_skipped_descent_takes_only_the_restarts_products():
    # "auto" checks a float64 M's rank first on the CPU (here by the Gram matrix's eigenvalues,
    # one product), before the tuner starts: sigma_max is the singular values', not estimated
    # too. Its spectrum skips descent, and the restart's first correction I - M^H M / s is made
    # from that Gram matrix: then two a step, and no product of the X it drops.
    matrix = conditioned_matrix(48, condition=2.25, batch_shape=(2,), dtype=torch.float64)
    with _Products(matrix) as products:
        result = invert(matrix)
    steps = result.report.refine_steps
    assert result.report.descent_stop == "skipped" and result.report.steps == 0
    assert products.count == 1 + 2 * steps
    residual = torch.linalg.matrix_norm(result.inverse @ matrix - torch.eye(48, dtype=matrix.dtype))
    assert bool((residual / 48**0.5 < 48 * torch.finfo(matrix.dtype).eps).all())


def test_a_run_that_fails_keeps_no_product_for_the_next(monkeypatch):
    # converge() keeps each check's product for the next window; a run that ends in an error
    # must not leave it for a later run on another X (the tracker keeps its stepper).
    stepper = HeavyBallStepper(
        InverseModule(spd_matrix(4, condition=10.0, dtype=torch.float64)), AUTO
    )
    kept = []
    check = HeavyBallStepper.check

    def failing_after_two(self, tol):
        done = check(self, tol)
        kept.append(self.checked_product is not None)
        if len(kept) == 2:
            raise DivergenceError("a check that fails, for the test")
        return done

    monkeypatch.setattr(HeavyBallStepper, "check", failing_after_two)
    with pytest.raises(DivergenceError, match="for the test"):
        converge(StoppingPolicy(stepper, tol=1e-14, max_steps=1000))
    assert kept == [True, True] and stepper.checked_product is None
