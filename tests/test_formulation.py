"""The formulation as one object: everything that depends on it, and no string branches."""

import re
from pathlib import Path

import pytest
import torch

import gdinv_modules
from gdinv_modules.core.errors import InvalidOptionError
from gdinv_modules.core.formulation import FORMULATIONS, LEFT, RIGHT, SYMMETRIC, as_formulation
from gdinv_modules.core.matrices import low_rank_matrix, random_matrix
from gdinv_modules.core.rank import product_target

F64 = torch.float64
PACKAGE = Path(gdinv_modules.__file__).parent
NAME_COMPARISON = re.compile(r"""(==|!=|\bin)\s*\(?\s*["'](left|right|symmetric)["']""")


def test_only_the_formulation_file_compares_the_formulation_names():
    files = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if NAME_COMPARISON.search(path.read_text())
    }
    assert files <= {"core/formulation.py"}, files


def test_the_comparison_pattern_catches_a_string_branch():
    assert NAME_COMPARISON.search('if formulation == "symmetric":')
    assert NAME_COMPARISON.search("return x if form in ('left', 'right') else y")
    assert not NAME_COMPARISON.search('LEFT = Formulation("left", ...)')


@pytest.mark.parametrize("form", list(FORMULATIONS.values()), ids=str)
def test_the_product_gradient_and_normal_operator_agree_with_autograd(form):
    m = random_matrix(4, seed=1, dtype=F64) + torch.eye(4, dtype=F64)
    x = random_matrix(4, seed=2, dtype=F64).requires_grad_()
    error = form.product(x, m) - torch.eye(4, dtype=F64)
    error.square().sum().backward()
    expected = x.grad  # d/dX ||E - I||^2 = 2 A*(E - I)
    torch.testing.assert_close(form.gradient(error.detach(), m, 2.0), expected)
    # <V, A*A V> = ||A V||^2 for the operator V -> E (E without the identity)
    v = random_matrix(4, seed=3, dtype=F64)
    image = form.product(v, m)
    quotient = (form.normal_operator(v, m) * v).sum()
    torch.testing.assert_close(quotient, image.square().sum())


def test_the_order_the_square_rule_and_the_column_split():
    assert LEFT.order((5, 3)) == 3 and RIGHT.order((5, 3)) == 5
    assert SYMMETRIC.needs_square and not LEFT.needs_square
    assert LEFT.allows_column_split and not SYMMETRIC.allows_column_split
    with pytest.raises(InvalidOptionError, match="no column split"):
        SYMMETRIC.columns_of(torch.eye(3), slice(0, 1))
    assert LEFT.other_side == (RIGHT, "M X = I") and SYMMETRIC.other_side is None


@pytest.mark.parametrize("form, shape", [(LEFT, (6, 4)), (RIGHT, (4, 6))], ids=str)
def test_the_projector_is_onto_the_space_the_product_reaches(form, shape):
    matrix = low_rank_matrix(shape[1], 3, rows=shape[0], dtype=F64)
    _, projector = product_target(matrix, form)
    pinv = torch.linalg.pinv(matrix)
    torch.testing.assert_close(projector, form.product(pinv, matrix), atol=1e-12, rtol=0)


def test_a_name_becomes_its_object_and_a_bad_one_is_refused():
    assert as_formulation("left") is LEFT and as_formulation(RIGHT) is RIGHT
    assert str(SYMMETRIC) == "symmetric" and LEFT.label == "||XM-I||/√k"
    with pytest.raises(InvalidOptionError, match="formulation must be one of"):
        as_formulation("upper")
