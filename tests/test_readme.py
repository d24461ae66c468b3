"""The README's code runs as written: the `camjax.explain` examples on a user's own models."""

import contextlib
import io
import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
MARKER = "<!-- README example: tests/test_readme.py runs this block as written -->"
NNX_MARKER = "<!-- README NNX example: tests/test_readme.py runs this block as written -->"


def readme_example(marker: str = MARKER) -> str:
    text = open(README).read()
    assert marker in text, "the README lost a tested example's marker"
    block = re.search(r"```python\n(.*?)```", text[text.index(marker) :], re.S)
    return block.group(1)


def printed_lines(code: str) -> list[str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    return printed.getvalue().splitlines()


def test_the_readme_explain_example_runs_and_prints_every_method():
    lines = printed_lines(readme_example())
    assert len(lines) == 5
    for line in lines:
        assert line.endswith("classes (8, 2) maps (8, 2, 64, 64)"), line


def test_the_readme_nnx_example_runs():
    lines = printed_lines(readme_example(NNX_MARKER))
    assert lines == ["layer_cam    classes (8, 2) maps (8, 2, 64, 64)"]
