"""The README's code is the code of ``examples/``, and every example runs and prints what it claims.

A claim is the trailing comment of a line that calls ``print``::

    print(store.metrics())  # Metrics(published=1, processed=1, errors=0)

Each claim must be one whole line of what the script prints. Examples run as real scripts, in a
subprocess started from a directory outside the repository, so worker processes start under
the default start method (forkserver) exactly as they do for a user.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import subprocess
import sys
import tempfile
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLES_DIR = ROOT / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.py"))
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
TIMEOUT = 60  # seconds per example; each takes well under one on an idle machine


def claims(source: str) -> list[str]:
    """The trailing comments of the lines that call print()."""
    found, print_lines = [], set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.string == "print":
            print_lines.add(tok.start[0])
        elif tok.type == tokenize.COMMENT and tok.start[0] in print_lines:
            found.append(tok.string.lstrip("#").strip())
    return found


def test_there_are_examples_and_readme_blocks():
    assert len(EXAMPLES) >= 10, f"expected the examples/ scripts, found {[p.name for p in EXAMPLES]}"
    assert len(BLOCKS) >= 10, "expected the README to show the examples in ```python blocks"


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block-{i}" for i in range(len(BLOCKS))])
def test_every_readme_python_block_is_an_example_or_an_exact_excerpt_of_one(index):
    block = BLOCKS[index]
    texts = {path.name: path.read_text(encoding="utf-8") for path in EXAMPLES}
    # An excerpt is whole lines: it starts a line of the file and ends with a newline.
    assert any(text == block or ("\n" + block) in ("\n" + text) for text in texts.values()), (
        f"README ```python block {index} (starting {block.splitlines()[0]!r}) is not the text of, "
        "nor an excerpt of, a file in examples/: edit the example and copy it into the README")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_shown_in_the_readme(path):
    text = README.read_text(encoding="utf-8")
    assert f"examples/{path.name}" in text, f"README does not name examples/{path.name}; show or link it"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_an_example_that_starts_workers_guards_its_main_module(path):
    source = path.read_text(encoding="utf-8")
    if re.search(r"workers=(?!0\b)", source):
        assert 'if __name__ == "__main__":' in source, (
            f"{path.name} starts worker processes, which import the main module: "
            'start the store under if __name__ == "__main__":')


@pytest.mark.timeout(TIMEOUT + 30)
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_and_prints_what_its_comments_claim(path):
    source = path.read_text(encoding="utf-8")
    expected = claims(source)
    assert expected, f"{path.name} states no claim: end a print(...) line with '# <what it prints>'"
    if path.name == "ray_backend.py" and importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (pip install 'busmp[ray]'); test_ray checks what the example says then")
    with tempfile.TemporaryDirectory() as outside:
        proc = subprocess.Popen([sys.executable, str(path)], cwd=outside, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"{path.name} ran longer than {TIMEOUT} s; stdout:\n{out}\nstderr:\n{err}")
    assert proc.returncode == 0, f"{path.name} exited with {proc.returncode}; stderr:\n{err}"
    assert "Traceback" not in err and "leaked" not in err, f"{path.name} wrote to stderr:\n{err}"
    printed = out.splitlines()
    for claim in expected:
        assert claim in printed, f"{path.name} claims it prints {claim!r}, but it printed:\n{out}"
    left = [name for name in os.listdir("/dev/shm") if name.startswith(f"busmp_{proc.pid}_")] \
        if os.path.isdir("/dev/shm") else []
    assert not left, f"{path.name} left shared memory behind: {left}"


def test_claims_are_read_from_print_lines_only():
    source = 'x = 1  # not a claim\nprint(x)  # 1\nprint(2)\n'
    assert claims(source) == ["1"]


def test_the_quick_start_states_its_metrics():
    """The README's first example shows, and the run above checks, what metrics() returns."""
    quick = (EXAMPLES_DIR / "quick_start.py").read_text(encoding="utf-8")
    assert any(c.startswith("Metrics(") for c in claims(quick))
    assert BLOCKS and BLOCKS[0] == quick, "the README's first ```python block is examples/quick_start.py"


def test_the_two_commands_name_what_exists_and_what_ci_runs():
    """The README's first commands: the demo exists (a script or ``python -m busmp demo``), and
    the test command is CI's."""
    text = README.read_text(encoding="utf-8")
    two = text[text.index("## Two commands"):text.index("\n## ", text.index("## Two commands") + 1)]
    commands = re.findall(r"```bash\n(.*?)```", two, re.S)
    assert len(commands) == 2, "the Two commands section holds the demo command and the test command"
    demo, tests = commands
    script = re.search(r"\.venv/bin/python (\S+\.py)", demo)
    module = re.search(r"\.venv/bin/python -m busmp (\w+)", demo)
    if module:
        import busmp._cli as cli  # the verb must exist in the CLI's parser

        with pytest.raises(SystemExit) as exited:
            cli.main([module.group(1), "--help"])
        assert exited.value.code == 0, f"the demo command names a missing verb: {demo}"
    else:
        assert script and (ROOT / script.group(1)).is_file(), f"the demo command runs a missing script: {demo}"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for step in ("pip install -q -e '.[test]'", "python -m pytest -q"):
        assert step in tests, f"the README's test command lost {step!r}"
    for step in ("pip install --quiet -e '.[test]'", "python -m pytest -q"):
        assert step in ci, f".ci/run no longer runs {step!r}, the README's test command"
