"""The package's layers, read from its imports; the lazy top level; the names that moved."""

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import gdinv_modules
from conftest import quiet_trainer

PACKAGE = Path(gdinv_modules.__file__).parent
LAYERS = ["core", "nn", "engine", "io", "training", "cli"]  # each may import those before it
THIRD_PARTY = {  # what each layer may import, besides the standard library and torch
    "core": set(),
    "nn": {"torchmetrics"},
    "engine": set(),
    "io": {"numpy", "matplotlib"},
    "training": {"pytorch_lightning"},
    "cli": {"pytorch_lightning", "jsonargparse", "yaml"},
}


def imports_of(path: Path):
    """(module imported, line) for every import in a file, type-checking-only ones excepted."""
    tree = ast.parse(path.read_text())
    type_checking = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            type_checking |= {id(child) for child in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module, node.lineno


def layer_files():
    return [(layer, path) for layer in LAYERS for path in sorted((PACKAGE / layer).glob("*.py"))]


@pytest.mark.parametrize("layer, path", layer_files(), ids=lambda v: getattr(v, "name", v))
def test_each_layer_imports_only_from_the_layers_below_it(layer, path):
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    for module, line in imports_of(path):
        parts = module.split(".")
        if parts[0] == "gdinv_modules":
            assert len(parts) > 1 and parts[1] in allowed, f"{path.name}:{line} imports {module}"
        elif parts[0] not in sys.stdlib_module_names and parts[0] != "torch":
            assert parts[0] in THIRD_PARTY[layer], f"{path.name}:{line} imports {module}"


def test_the_layer_rule_catches_an_upward_import(tmp_path):
    upward = tmp_path / "bad.py"
    upward.write_text("from gdinv_modules.training.lit_inverse import LitInverse\n")
    assert ("gdinv_modules.training.lit_inverse", 1) in list(imports_of(upward))
    with pytest.raises(AssertionError, match="imports gdinv_modules.training"):
        test_each_layer_imports_only_from_the_layers_below_it("core", upward)


def test_every_module_of_the_package_sits_in_a_layer():
    loose = {path.name for path in PACKAGE.glob("*.py")} - {"__init__.py"}
    assert loose == set()


def loaded_after(statement: str) -> list:
    """Which of Lightning and matplotlib a fresh interpreter has loaded after ``statement``."""
    code = (
        f"import sys; {statement}; print(sorted(m for m in ('pytorch_lightning', 'lightning', "
        "'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout.strip())


def test_the_top_level_imports_neither_lightning_nor_matplotlib():
    assert loaded_after("import gdinv_modules") == []
    names = "InverseModule, HeavyBallStepper, ConvergenceReport, load_matrix, spd_matrix"
    assert loaded_after(f"from gdinv_modules import {names}") == []
    # torchmetrics itself imports matplotlib (for Metric.plot) where it is installed
    assert loaded_after("from gdinv_modules import IdentityMSE") == ["matplotlib"]
    assert "pytorch_lightning" in loaded_after("from gdinv_modules import LitInverse")


def test_the_public_names_of_the_flat_layout_still_import_from_the_top():
    names = """invert InverseResult InverseModule IdentityMSE LitInverse MatrixDataModule
    make_matrix ConvergenceMonitor ConvergenceReport HeavyBallTuner ResumableCheckpoint RunOutputs
    default_tol load_matrix save_matrix GDInvError InvalidOptionError MatrixDtypeError
    MatrixFileError MatrixShapeError NonFiniteMatrixError OutputExistsError DivergenceError
    ConvergenceError ConvergenceWarning SingularMatrixWarning""".split()
    assert set(names) <= set(gdinv_modules.__all__)
    for name in gdinv_modules.__all__:
        assert getattr(gdinv_modules, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        gdinv_modules.nothing  # noqa: B018


def test_an_old_module_path_imports_the_new_module_with_a_warning():
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "try:\n    from gdinv_modules.matrices import random_matrix\n"
        "except DeprecationWarning as warning:\n    print(warning)\n"
        "warnings.simplefilter('ignore')\n"
        "import gdinv_modules.matrices as old, gdinv_modules.core.matrices as new\n"
        "print(old is new, old.random_matrix is new.random_matrix)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "module gdinv_modules.matrices is deprecated; use gdinv_modules.core.matrices",
        "True True",
    ]


def test_renamed_functions_and_attributes_warn_and_still_work(m1):
    from gdinv_modules.core import functional, rank
    from gdinv_modules import InverseModule

    module = InverseModule(m1)
    with pytest.warns(DeprecationWarning, match="use InverseModule.inverse"):
        assert module.approx is module.inverse
    with pytest.warns(DeprecationWarning, match="functional.inverse_product"):
        assert functional.identity_estimate is functional.inverse_product
    with pytest.warns(DeprecationWarning, match="product_target"):
        assert rank.estimate_target is rank.product_target


def test_renamed_options_warn_and_keep_their_meaning(m2):
    from gdinv_modules import LitInverse, MatrixDataModule

    with pytest.warns(DeprecationWarning, match="steps_per_window"):
        model = LitInverse(m2, steps_per_batch=7)
    assert model.hparams.steps_per_window == 7 and "steps_per_batch" not in model.hparams
    with pytest.warns(DeprecationWarning, match="shard='batch'"):
        assert LitInverse(m2, shard="auto").hparams.shard == "batch"
    with pytest.warns(DeprecationWarning, match="windows_per_epoch"):
        data = MatrixDataModule("diagonal", batches_per_epoch=3)
    assert len(data.train_dataloader()) == 3


def test_a_checkpoint_written_before_the_renames_loads(m1, tmp_path):
    from gdinv_modules import LitInverse

    model = LitInverse(m1)
    trainer = quiet_trainer(max_steps=200)
    trainer.fit(model)
    path = tmp_path / "new.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    state = checkpoint["state_dict"]
    state["inverse_module.approx"] = state.pop("inverse_module.inverse")  # as it was written
    torch.save(checkpoint, tmp_path / "old.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading the old key warns no one: it is ours to map
        restored = LitInverse.load_from_checkpoint(tmp_path / "old.ckpt")
    assert torch.equal(restored.inverse, model.inverse)
    assert torch.equal(restored.losses, model.losses)
