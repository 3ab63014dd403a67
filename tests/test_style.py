"""House rules a reader relies on: raw docstrings where they hold backslashes, ruff's settings
matching the supported Python, and ruff's checks (import order included) passing."""

import configparser
import io
import shutil
import subprocess
import sys
import tokenize
import tomllib
from pathlib import Path

import pytest

import gdinv_modules

ROOT = Path(gdinv_modules.__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "gdinv_modules").rglob("*.py"))


def cooked_triple_quoted_with_backslashes(text: str) -> list:
    """Line numbers of triple-quoted, non-raw strings that hold a backslash (a ``\\r`` there
    is a carriage return, a ``\\l`` an invalid escape)."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type != tokenize.STRING:
            continue
        prefix = token.string[: len(token.string) - len(token.string.lstrip("rRbBuUfF"))]
        body = token.string[len(prefix) :]
        if body[:3] in ('"""', "'''") and "r" not in prefix.lower() and "\\" in body:
            found.append(token.start[0])
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_docstrings_with_backslashes_are_raw(path):
    assert cooked_triple_quoted_with_backslashes(path.read_text()) == []


def test_the_rule_catches_a_cooked_docstring():
    assert cooked_triple_quoted_with_backslashes('"""\\rVert"""\n') == [1]
    assert cooked_triple_quoted_with_backslashes('r"""\\rVert"""\n') == []


def test_ruff_targets_the_oldest_supported_python_and_sorts_imports():
    ruff = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    oldest = setup["options"]["python_requires"].removeprefix(">=").strip()
    assert ruff["target-version"] == "py" + oldest.replace(".", "")
    assert "I" in ruff["lint"]["select"]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_ruff_passes():
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "gdinv_modules", "tests", "benchmarks", "train.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:]
