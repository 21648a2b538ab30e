"""What a wheel of busmp holds: every package under busmp/, and the py.typed marker.

The editable install finds any package on disk, so a subpackage missing from pyproject.toml
goes unnoticed until someone installs the wheel; this reads the declaration instead.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent


def setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def packages_on_disk() -> set[str]:
    return {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "busmp").rglob("__init__.py")}


def test_every_package_under_busmp_is_in_the_wheel():
    declared = setuptools_config()["packages"]
    on_disk = packages_on_disk()
    assert "busmp" in on_disk
    if isinstance(declared, list):
        missing = sorted(on_disk - set(declared))
        assert not missing, (f"pyproject.toml's [tool.setuptools] packages leaves out {missing}: the wheel "
                             "would lack them; list them, or use [tool.setuptools.packages.find] "
                             "include = [\"busmp*\"]")
    else:
        include = declared["find"].get("include", ["*"])
        missing = sorted(p for p in on_disk if not any(fnmatch.fnmatch(p, pattern) for pattern in include))
        assert not missing, f"[tool.setuptools.packages.find] include = {include} misses {missing}"


def test_the_wheel_carries_the_typing_marker():
    assert (ROOT / "busmp" / "py.typed").is_file()
    assert "py.typed" in setuptools_config()["package-data"]["busmp"], \
        "keep busmp = [\"py.typed\"] in [tool.setuptools.package-data]: type checkers need it"
