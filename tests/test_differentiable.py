"""Differentiable and transform-safe: the tracker and invert() under autograd at every order,
torch.func, torch.compile, autocast and dtype conversions, against torch.linalg.inv."""

import pytest
import torch
from torch.nn.utils import parametrize

from gdinv_modules import (
    GDInvError,
    HeavyBallStepper,
    InverseModule,
    InverseTracker,
    SingularMatrixWarning,
    StepOptions,
    conditioned_matrix,
    invert,
    low_rank_matrix,
)
from gdinv_modules.core.errors import (
    InvalidOptionError,
    MatrixDtypeError,
    NonFiniteMatrixError,
    SingularMatrixError,
)
from gdinv_modules.core.spectral import sigma_max_route
from gdinv_modules.engine.implicit import inverse_of

F64 = torch.float64


def well_conditioned(n=4, seed=0, batch_shape=()):
    return conditioned_matrix(n, condition=5.0, seed=seed, batch_shape=batch_shape, dtype=F64)


def tight_tracker(matrix):
    return InverseTracker(matrix, tol=1e-14)  # finite differences need X to the last digits


def hvp(function, matrix, vector):
    (gradient,) = torch.autograd.grad(function(matrix).square().sum(), matrix, create_graph=True)
    return torch.autograd.grad(gradient, matrix, vector)[0]


def test_a_hessian_vector_product_through_the_tracker_is_linalg_invs():
    matrix = well_conditioned().requires_grad_()
    tracker = tight_tracker(matrix.detach())
    vector = torch.randn(4, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    ours, theirs = hvp(tracker, matrix, vector), hvp(torch.linalg.inv, matrix, vector)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    # a loss linear in X has a second derivative too (it needs X's own derivative)
    (gradient,) = torch.autograd.grad(tracker(matrix).sum(), matrix, create_graph=True)
    (expected,) = torch.autograd.grad(torch.linalg.inv(matrix).sum(), matrix, create_graph=True)
    second = torch.autograd.grad(gradient.square().sum(), matrix)[0]
    torch.testing.assert_close(second, torch.autograd.grad(expected.square().sum(), matrix)[0])


def test_gradcheck_and_gradgradcheck_pass_on_one_tracker_called_many_times():
    matrix = well_conditioned(3).requires_grad_()
    tracker = tight_tracker(matrix.detach())
    assert torch.autograd.gradcheck(tracker, (matrix,))
    assert torch.autograd.gradgradcheck(tracker, (matrix,))


def test_each_calls_graph_stays_valid_after_later_updates():
    a, b = well_conditioned(seed=1).requires_grad_(), well_conditioned(seed=2).requires_grad_()
    tracker = tight_tracker(a.detach())
    first, second = tracker(a), tracker(b)  # the second update rewrites the tracker's X
    tracker.update(well_conditioned(seed=3))
    (first + second).sum().backward()
    for matrix in (a, b):
        (expected,) = torch.autograd.grad(torch.linalg.inv(matrix).sum(), matrix)
        torch.testing.assert_close(matrix.grad, expected, rtol=1e-10, atol=1e-12)


def test_torch_func_transforms_apply_to_the_tracked_inverse():
    matrix = well_conditioned()
    tracker = tight_tracker(matrix)
    function = lambda m: inverse_of(m, tracker.inverse)  # noqa: E731
    tangent = torch.randn(4, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    pairs = [
        (torch.func.grad(lambda m: function(m).sum())(matrix),
         torch.func.grad(lambda m: torch.linalg.inv(m).sum())(matrix)),
        (torch.func.jacrev(function)(matrix), torch.func.jacrev(torch.linalg.inv)(matrix)),
        (torch.func.jvp(function, (matrix,), (tangent,))[1],
         torch.func.jvp(torch.linalg.inv, (matrix,), (tangent,))[1]),
    ]  # fmt: skip
    for ours, theirs in pairs:
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    batch = well_conditioned(batch_shape=(3,))
    batched = tight_tracker(batch)  # vmap over the leading dimension, per matrix
    ours = torch.func.vmap(torch.func.jacrev(inverse_of))(batch, batched.inverse)
    theirs = torch.func.vmap(torch.func.jacrev(torch.linalg.inv))(batch)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("transform", ["grad", "vmap", "vmap over matrices of its shape"])
def test_an_update_inside_a_transform_is_refused_naming_the_way_that_works(transform):
    matrix = well_conditioned(batch_shape=(2,))
    tracker = tight_tracker(matrix if transform != "vmap over matrices of its shape" else matrix[0])
    before = tracker.inverse.clone()
    call = (
        torch.func.grad(lambda m: tracker(m).sum())
        if transform == "grad"
        else torch.func.vmap(tracker)
    )
    with pytest.raises(GDInvError, match="inside a torch.func transform.*inverse_of"):
        call(matrix + 1e-3)
    assert torch.equal(tracker.inverse, before)


def test_torch_compile_around_the_tracker_does_not_recompile_per_update():
    compiled = []

    def counting_backend(graph, example_inputs):
        compiled.append(graph)
        return graph.forward

    tracker = InverseTracker(well_conditioned(8))

    @torch.compile(backend=counting_backend)
    def step(matrix):
        return (tracker(matrix * 1.0) @ matrix).trace()

    generator = torch.Generator().manual_seed(3)
    values = []
    for index in range(12):
        drift = 1e-3 * torch.randn(8, 8, dtype=F64, generator=generator)
        matrix = well_conditioned(8) + drift
        values.append(step(matrix).item())
        if index == 2:
            settled = len(compiled)
    assert len(compiled) == settled  # a graph break at the update, never a recompile
    assert values[-1] == pytest.approx(8.0, rel=1e-10)


def test_tracing_and_scripting_are_refused_by_name_pointing_to_compile():
    tracker = InverseTracker(well_conditioned())
    with pytest.raises(InvalidOptionError, match="cannot be traced.*torch.compile"):
        torch.jit.trace(tracker, (well_conditioned(seed=4),), check_trace=False)
    with pytest.raises(InvalidOptionError, match="cannot be scripted.*torch.compile"):
        torch.jit.script(tracker)


def test_autocast_never_reaches_the_steps():
    matrix = conditioned_matrix(16, condition=50.0, dtype=torch.float32)
    plain = invert(matrix)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = invert(matrix)
        stepper = HeavyBallStepper(InverseModule(matrix, init="zeros"), StepOptions("auto", "auto"))
        stepper.run(50)
        tracker = InverseTracker(matrix)
        jumped = tracker.update(conditioned_matrix(16, condition=50.0, seed=9))
    assert torch.equal(inside.inverse, plain.inverse)
    assert stepper.module.inverse.dtype == torch.float32 and stepper.history.losses.isfinite().all()
    assert jumped.jumped and jumped.residual.item() <= 1e-5


def test_a_conversion_re_derives_tol_and_a_half_dtype_is_refused():
    tracker = InverseTracker(well_conditioned().float())
    assert tracker.tol == 1e-5
    tracker.double()
    assert tracker.tol == 1e-10 and tracker.inverse.dtype == F64
    update = tracker.update(well_conditioned(seed=5))
    assert update.residual.item() <= 1e-10
    for convert in (tracker.half, tracker.bfloat16):
        with pytest.raises(MatrixDtypeError, match="float32, float64"):
            convert()
        assert tracker.inverse.dtype == F64
    fixed = InverseTracker(well_conditioned().float(), tol=1e-4).double()
    assert fixed.tol == 1e-4  # a tol the user set stays


def test_a_singular_matrix_is_refused_by_the_tracker_and_its_state_kept():
    with pytest.raises(SingularMatrixError, match="singular"):
        InverseTracker(low_rank_matrix(4, 2, dtype=F64))
    tracker = InverseTracker(well_conditioned())
    before = tracker.inverse.clone()
    with pytest.raises(SingularMatrixError, match="keeps the last inverse"):
        tracker.update(low_rank_matrix(4, 2, dtype=F64))
    assert torch.equal(tracker.inverse, before)


def test_invert_is_differentiable_where_m_requires_grad():
    matrix = well_conditioned().requires_grad_()
    vector = torch.randn(4, 4, dtype=F64, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(
        hvp(lambda m: invert(m, tol=1e-14).inverse, matrix, vector),
        hvp(torch.linalg.inv, matrix, vector),
        rtol=1e-9,
        atol=1e-11,
    )
    singular = low_rank_matrix(4, 2, dtype=F64).requires_grad_()
    with (
        pytest.raises(SingularMatrixError, match="pass M.detach"),
        pytest.warns(SingularMatrixWarning),
    ):
        invert(singular)


def test_the_stepper_says_when_m_turns_non_finite_and_leaves_no_grad():
    module = InverseModule(well_conditioned(), init="zeros")
    stepper = HeavyBallStepper(module, StepOptions("auto", "auto"))
    stepper.run(10)
    assert module.inverse.grad is None
    module.matrix[0, 0] = float("nan")  # written from outside, mid-run
    stepper.run(10)
    with pytest.raises(NonFiniteMatrixError, match="M holds NaN"):
        stepper.check(1e-10)


def test_a_parametrized_x_is_refused_by_the_stepper_by_name():
    module = InverseModule(well_conditioned())
    parametrize.register_parametrization(module, "inverse", torch.nn.Identity())
    with pytest.raises(InvalidOptionError, match="HeavyBallStepper steps the parameter X itself"):
        HeavyBallStepper(module)


def test_invert_under_grad_is_the_inverses_derivative_and_under_vmap_refused_by_name():
    matrix = well_conditioned(batch_shape=(2,))
    ours = torch.func.grad(lambda m: invert(m).inverse.sum())(matrix)
    theirs = torch.func.grad(lambda m: torch.linalg.inv(m).sum())(matrix)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    with pytest.raises(InvalidOptionError, match="vmap.*call it outside.*inverse_of"):
        torch.func.vmap(lambda m: invert(m).inverse)(matrix)
    inverse = invert(matrix).inverse  # the way the refusal names: X from outside, passed in
    inside = torch.func.vmap(torch.func.jacrev(inverse_of))(matrix, inverse)
    torch.testing.assert_close(inside, torch.func.vmap(torch.func.jacrev(torch.linalg.inv))(matrix))


def test_invert_under_grad_takes_sigma_max_by_squarings_too():
    # a batch of small float32 matrices: the tuner's squarings write their products in place
    # (matmul's out= is refused by torch.func's wrapped tensors)
    matrix = conditioned_matrix(16, condition=2.0, batch_shape=(256,))
    assert sigma_max_route(matrix, 64) == "squaring"
    ours = torch.func.grad(lambda m: invert(m).inverse.sum())(matrix)
    theirs = torch.func.grad(lambda m: torch.linalg.inv(m).sum())(matrix.double())
    # X to float32's rounding, n eps_32 of the largest entry
    atol = 16 * torch.finfo(torch.float32).eps * theirs.abs().max().item()
    torch.testing.assert_close(ours.double(), theirs, rtol=0, atol=atol)


def test_invert_under_grad_refines_a_batch_whose_matrices_stop_at_different_steps():
    # refinement keeps each matrix's best X and reuses old X's memory: under torch.func's
    # wrapped tensors too (which refuse matmul's out=)
    matrix = torch.stack(
        [
            conditioned_matrix(24, condition=condition, dtype=torch.float64, seed=seed)
            for seed, condition in enumerate((1.5, 50.0, 500.0))
        ]
    )
    ours = torch.func.grad(lambda m: invert(m).inverse.sum())(matrix)
    theirs = torch.func.grad(lambda m: torch.linalg.inv(m).sum())(matrix)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12 * theirs.abs().max().item())
