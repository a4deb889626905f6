"""pyproject.toml declares what the code imports: every third-party package that sda/, tasks/ and
flows/ import is a dependency (dask-cuda in the [gpu] extra), and every dependency is imported or
has a stated reason."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from tasks.code_deps import _imports

ROOT = Path(__file__).resolve().parents[2]
# declared but not imported by the code, and why
NOT_IMPORTED = {"dvc": "the stages run under its CLI (dvc repro)",
                "ruamel-yaml-clib": "the C loader that makes DVC's YAML reads 3.5x faster"}
# import name -> distribution, for what may not be installed here (the [gpu] extra)
KNOWN = {"dask_cuda": "dask-cuda"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(req: str) -> set[str]:
    """A requirement's distribution, plus those its extras stand for (dask[distributed] -> distributed)."""
    m = re.match(r"([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?", req)
    return {_norm(m[1]), *(_norm(e) for e in (m[2] or "").split(",") if e.strip())}


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return (set().union(*map(_names, project["dependencies"])),
            {extra: set().union(*map(_names, reqs)) for extra, reqs in project["optional-dependencies"].items()})


def _imported() -> set[str]:
    """The top-level packages that the modules of sda/, tasks/ and flows/ import (project ones left out)."""
    mods = set()
    for f in (f for folder in ("sda", "tasks", "flows") for f in (ROOT / folder).rglob("*.py")):
        module = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        mods.update(m.split(".")[0] for m in _imports(f, module, packages=None))
    return {m for m in mods if m not in sys.stdlib_module_names and m not in ("sda", "tasks", "flows")}


def test_every_imported_package_is_declared_and_every_dependency_used():
    dists = packages_distributions()
    main, extras = _declared()
    used = set()
    for module in _imported():
        names = {_norm(d) for d in dists.get(module, [])} or {_norm(KNOWN.get(module, module))}
        assert names & (main | extras["gpu"]), f"{module} is imported but not declared in pyproject.toml"
        used |= names
    assert extras["gpu"] <= used and "dask-cuda" not in main
    unused = main - used - set(NOT_IMPORTED)
    assert not unused, f"declared but never imported (remove them, or say why in NOT_IMPORTED): {sorted(unused)}"
