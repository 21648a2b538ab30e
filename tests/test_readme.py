"""The README's examples run, and print what the README says they print."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("code", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs_and_its_comments_hold(code):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {"__name__": "__main__"})
    for claim in re.findall(r"print\(store\.metrics\(\)\)\s+# (Metrics\(.*\))", code):
        assert claim in out.getvalue()
    assert out.getvalue(), "every README example prints something"


def test_the_quick_start_states_its_metrics():
    """The check above compares printed metrics with the README's comment; there must be one."""
    assert any(re.search(r"print\(store\.metrics\(\)\)\s+# Metrics\(", code) for code in EXAMPLES)
