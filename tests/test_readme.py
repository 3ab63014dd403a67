"""The README's Python examples run as written, so the README never goes stale."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs(index):
    exec(compile(EXAMPLES[index], f"README.md example {index}", "exec"), {})


def test_the_readme_shows_the_set_up_commands_that_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = (
        'python -m pip install torch==2.13.0 && python -m pip install -e ".[test]" '
        "&& python -m pytest"
    )
    assert test_command in text and test_command in ci
    assert "python train.py fit --config configs/seed_random.yaml" in text
