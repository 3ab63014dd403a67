"""InverseModule: construction, formulations, composition, and clear errors for bad input."""

import pytest
import torch
from torch import nn

from gdinv_modules import GDInvError, InverseModule, NotReadyError
from gdinv_modules.core.errors import (
    InvalidOptionError,
    MatrixDtypeError,
    MatrixShapeError,
    NonFiniteMatrixError,
)
from gdinv_modules.core.matrices import random_matrix, spd_matrix


def test_random_init_reproduces_the_posts_first_guess(m1):
    module = InverseModule(m1)
    torch.manual_seed(314)
    assert torch.equal(module.inverse.detach(), torch.rand(4, 4))
    # The post draws M1 the same way, so its first guess is M1 itself.
    assert torch.equal(module.inverse, m1)


def test_random_draws_ignore_the_default_dtype(m1):
    """Lightning's 64-true precision sets the default dtype; the post's numbers must not move."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert torch.equal(random_matrix(4, dtype=torch.float32), m1)
        assert torch.equal(InverseModule(m1).inverse, m1)
    finally:
        torch.set_default_dtype(previous)


def test_parameter_and_buffer_keep_shape_dtype_and_device():
    m = random_matrix(3, batch_shape=(2, 5), dtype=torch.float64)
    module = InverseModule(m, init="zeros")
    assert isinstance(module.inverse, nn.Parameter)
    assert module.inverse.shape == m.shape == module.matrix.shape
    assert module.inverse.dtype == torch.float64 == module.matrix.dtype
    assert module.inverse.device == m.device
    assert module.order == 3 and module.batch_shape == (2, 5)
    assert dict(module.named_buffers()).keys() == {"matrix"}
    assert torch.count_nonzero(module.inverse) == 0


def test_float64_first_guess_is_the_float32_draw_cast():
    m = random_matrix(4, dtype=torch.float64)
    assert torch.equal(InverseModule(m).inverse, InverseModule(m.float()).inverse.double())


def test_forward_gives_each_formulation(m1):
    module = InverseModule(m1)
    x = module.inverse
    assert torch.equal(module(), x @ m1)
    assert torch.equal(InverseModule(m1, formulation="right")(), m1 @ x)
    torch.testing.assert_close(InverseModule(m1, formulation="symmetric")(), (x @ m1 + m1 @ x) / 2)


def test_residual_and_loss_are_per_matrix():
    m = random_matrix(4, batch_shape=(3,))
    module = InverseModule(m)
    assert module.residual().shape == (3,)
    assert module.loss().shape == (3,)
    exact = InverseModule(m)
    with torch.no_grad():
        exact.inverse.copy_(torch.linalg.inv(m.double()).float())
    assert exact.residual().max() < 100 * torch.finfo(torch.float32).eps


def test_built_from_size_takes_the_matrix_at_call_time():
    module = InverseModule(size=4, batch_shape=(2,), dtype=torch.float64, init="zeros")
    assert module.matrix is None
    assert module.inverse.shape == (2, 4, 4) and module.inverse.dtype == torch.float64
    m = random_matrix(4, batch_shape=(2,), dtype=torch.float64)
    assert torch.equal(module(m), module.inverse @ m)
    with pytest.raises(NotReadyError, match="pass the matrix"):
        module()


def test_call_time_matrix_broadcasts_over_the_batch():
    """One shared X (a learned preconditioner) applied to a batch of matrices."""
    module = InverseModule(size=3, init="random")
    batch = random_matrix(3, batch_shape=(5,))
    assert module(batch).shape == (5, 3, 3)


def test_composition_trains_end_to_end_and_gradients_reach_both():
    """A network produces M from its own parameters; X and the network train together."""

    class MatrixNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(spd_matrix(3, condition=2.0, dtype=torch.float64))

        def forward(self) -> torch.Tensor:
            return self.weight + 0.5 * torch.eye(3, dtype=torch.float64)

    net = MatrixNet()
    inverse = InverseModule(size=3, dtype=torch.float64, init="random")
    optimizer = torch.optim.SGD([*net.parameters(), *inverse.parameters()], lr=0.5, momentum=0.5)
    first = inverse.loss(net()).item()
    for step in range(300):
        optimizer.zero_grad()
        loss = inverse.loss(net()).sum()
        loss.backward()
        if step == 0:
            assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0
            assert inverse.inverse.grad is not None and inverse.inverse.grad.abs().sum() > 0
        optimizer.step()
    m = net().detach()
    assert inverse.loss(m).item() < 1e-12 < first
    torch.testing.assert_close(inverse.inverse, torch.linalg.inv(m), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "bad, error, words",
    [
        (torch.rand(4), MatrixShapeError, "at least 2 dimensions"),
        (torch.rand(0, 0), MatrixShapeError, "empty"),
        (torch.ones(3, 3, dtype=torch.int64), MatrixDtypeError, "floating"),
        (torch.ones(3, 3, dtype=torch.bool), MatrixDtypeError, "floating"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), NonFiniteMatrixError, r"\(0, 1\)"),
        (torch.tensor([[1.0, 0.0], [float("inf"), 1.0]]), NonFiniteMatrixError, "NaN or infinite"),
        ([[1.0, 0.0], [0.0, 1.0]], MatrixDtypeError, "torch.Tensor"),
    ],
)
def test_bad_matrices_get_a_clear_error(bad, error, words):
    with pytest.raises(error, match=words) as raised:
        InverseModule(bad)
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, GDInvError)


@pytest.mark.parametrize(
    "call_time, words",
    [
        (torch.rand(5, 5), r"last two dimensions must be \(4, 4\)"),
        (torch.rand(3, 4, 4), "do not broadcast"),
        (torch.rand(2, 4, 4, dtype=torch.float64), "dtype"),
        (torch.rand(2, 4, 3), r"must be \(4, 4\)"),
    ],
)
def test_call_time_matrix_that_does_not_fit_is_refused(call_time, words):
    module = InverseModule(size=4, batch_shape=(2,))
    with pytest.raises(GDInvError, match=words):
        module(call_time)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(formulation="diagonal"), "formulation"),
        (dict(init="ones"), "init"),
    ],
)
def test_bad_options_are_named(kwargs, words):
    with pytest.raises(InvalidOptionError, match=words):
        InverseModule(torch.eye(2), **kwargs)


def test_symmetric_formulation_refuses_a_rectangular_matrix():
    with pytest.raises(MatrixShapeError, match="square"):
        InverseModule(torch.rand(3, 4), formulation="symmetric")
    with pytest.raises(MatrixShapeError, match="square"):
        InverseModule(size=(3, 4), formulation="symmetric")
    module = InverseModule(size=3, formulation="symmetric")
    with pytest.raises(MatrixShapeError, match="square"):
        module(torch.rand(3, 4))


def test_rectangular_matrix_gives_an_n_by_m_inverse():
    tall = random_matrix(5, seed=1)[:, :3]  # 5 x 3
    left = InverseModule(tall)
    assert left.inverse.shape == (3, 5) and left().shape == (3, 3) and left.order == 3
    right = InverseModule(tall.T.contiguous(), formulation="right")
    assert right.inverse.shape == (5, 3) and right().shape == (3, 3)
    from_size = InverseModule(size=(5, 3), formulation="right", batch_shape=(2,))
    assert from_size.inverse.shape == (2, 3, 5) and from_size.order == 5
    assert from_size(torch.rand(2, 5, 3)).shape == (2, 5, 5)


def test_size_and_matrix_are_exclusive_and_size_must_be_positive():
    with pytest.raises(InvalidOptionError, match="not both"):
        InverseModule(torch.eye(2), size=2)
    with pytest.raises(InvalidOptionError, match="size"):
        InverseModule(size=0)
    with pytest.raises(InvalidOptionError, match="give the matrix"):
        InverseModule()
    with pytest.raises(MatrixDtypeError, match="floating"):
        InverseModule(size=2, dtype=torch.int32)


def test_forward_takes_no_host_sync_so_transforms_apply_with_the_defaults():
    module = InverseModule(size=4, batch_shape=(2,), dtype=torch.float64)
    matrices = torch.rand(3, 2, 4, 4, dtype=torch.float64)  # an ensemble of batches
    expected = torch.stack([module(m) for m in matrices])
    torch.testing.assert_close(torch.func.vmap(module)(matrices), expected)
    compiled = torch.compile(module, fullgraph=True)
    torch.testing.assert_close(compiled(matrices[0]), expected[0])
    exported = torch.export.export(module, (matrices[0],))
    torch.testing.assert_close(exported.module()(matrices[0]), expected[0])
    meta = InverseModule(size=4, device="meta")
    assert meta(torch.empty(4, 4, device="meta")).device.type == "meta"
    nan = torch.full((2, 4, 4), float("nan"), dtype=torch.float64)
    assert module(nan).isnan().all()  # a call-time M is not read on the host; a stored one is


def test_scripting_is_refused_by_name_with_the_way_that_works():
    with pytest.raises(GDInvError, match="InverseModule cannot be scripted.*torch.compile"):
        torch.jit.script(InverseModule(size=3))


def test_the_module_stores_a_copy_of_m_unless_told_not_to():
    m = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    copied, shared = InverseModule(m), InverseModule(m, copy=False)
    assert copied.matrix.data_ptr() != m.data_ptr() and shared.matrix.data_ptr() == m.data_ptr()
    m[0, 0] = 5.0  # a later write to M reaches the module that shares it only
    assert copied.matrix[0, 0] == 2.0 and shared.matrix[0, 0] == 5.0
