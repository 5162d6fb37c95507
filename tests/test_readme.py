"""The README's usage example runs as written."""

from __future__ import annotations

import pathlib
import re

import pytest


def test_readme_usage_example_runs():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    code = blocks[0].replace("steps=100", "steps=20")
    exec(compile(code, "README.md", "exec"), {})
