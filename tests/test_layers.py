"""The package's layers, read from its imports; the lazy top level; the names that moved."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gdinv_modules

PACKAGE = Path(gdinv_modules.__file__).parent
LAYERS = ["core", "nn", "engine", "io", "training", "cli"]  # each may import those before it
THIRD_PARTY = {  # what each layer may import, besides the standard library and torch
    "core": set(),
    "nn": {"torchmetrics"},
    "engine": set(),
    "io": {"numpy", "matplotlib"},
    "training": {"pytorch_lightning", "lightning"},
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


def loaded_after(*statements: str) -> list:
    """Which of Lightning and matplotlib a fresh interpreter has loaded after each of
    ``statements``, run in turn in one interpreter (each start costs seconds)."""
    names = "('pytorch_lightning', 'lightning', 'matplotlib')"
    probe = f"print(sorted(m for m in {names} if m in sys.modules))"
    code = "import sys\n" + "".join(f"{statement}\n{probe}\n" for statement in statements)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [ast.literal_eval(line) for line in done.stdout.strip().splitlines()]


def test_the_top_level_imports_neither_lightning_nor_matplotlib():
    names = "InverseModule, HeavyBallStepper, ConvergenceReport, load_matrix, spd_matrix"
    loaded = loaded_after(
        "import gdinv_modules",
        f"from gdinv_modules import {names}",
        "from gdinv_modules import IdentityMSE",
        "from gdinv_modules import LitInverse",
    )
    assert loaded[:2] == [[], []]
    # torchmetrics itself imports matplotlib (for Metric.plot) where it is installed
    assert loaded[2] == ["matplotlib"]
    assert "pytorch_lightning" in loaded[3]


def test_the_public_api_is_one_list_of_the_names_a_user_needs():
    names = set(gdinv_modules.__all__)
    assert 18 <= len(names) <= 27 and len(names) == len(gdinv_modules.__all__)
    for name in gdinv_modules.__all__:
        assert getattr(gdinv_modules, name) is not None
    assert {"invert", "InverseModule", "InverseTracker", "inverse_of", "LitInverse"} <= names
    assert "GDInvError" in names
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        gdinv_modules.nothing  # noqa: B018


def test_there_are_no_import_cycles_inside_the_package():
    graph = {}
    for layer, path in layer_files():
        module = f"gdinv_modules.{layer}.{path.stem}"
        graph[module] = {
            imported for imported, _ in imports_of(path) if imported.startswith("gdinv_modules.")
        }
    # type-checking-only imports count too: a cycle there is one a reader has to untangle
    for layer, path in layer_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "gdinv_modules."
            ):
                graph[f"gdinv_modules.{layer}.{path.stem}"].add(node.module)

    def reaches(start, goal, seen):
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = [module for module in graph if reaches(module, module, {module})]
    assert cycles == []


def test_old_names_are_gone():
    for old in (
        "gdinv_modules.matrices",
        "gdinv_modules.core.deprecation",
        "gdinv_modules.cli.exit",
    ):
        with pytest.raises(ModuleNotFoundError):
            __import__(old)
    assert not hasattr(gdinv_modules.InverseModule, "approx")
