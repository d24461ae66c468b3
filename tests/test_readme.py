"""The README's code runs as written: the `camjax.explain` example on a user's own model."""

import contextlib
import io
import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
MARKER = "<!-- README example: tests/test_readme.py runs this block as written -->"


def readme_example() -> str:
    text = open(README).read()
    assert MARKER in text, "the README lost its tested example's marker"
    block = re.search(r"```python\n(.*?)```", text[text.index(MARKER) :], re.S)
    return block.group(1)


def test_the_readme_explain_example_runs_and_prints_every_method():
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(readme_example(), "README.md", "exec"), {})
    lines = printed.getvalue().splitlines()
    assert len(lines) == 5
    for line in lines:
        assert line.endswith("classes (8, 2) maps (8, 2, 64, 64)"), line
