"""The lock files say exactly what is installed and agree with pyproject.toml.

requirements.lock (the pipeline) and requirements-dev.lock (the same and the [dev] extra) pin every
transitive package with its hashes; `make lock` writes them, tools/install.sh installs them exactly.
Here: the test venv holds the dev lock and nothing else, every requirement of pyproject.toml is pinned
at a version it admits, and each lock holds what its requirements pull in, no more (a dependency added
to pyproject.toml alone, or removed from it alone, fails)."""

from __future__ import annotations

import re
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
# in the venv but not in a lock: pip is the venv's own installer (python -m venv puts it there), and the
# project is installed editable from the checkout
NOT_LOCKED = {"pip", "sda-pipeline"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lock: str) -> dict[str, str]:
    """name -> version of a lock file's `name==version \\` lines."""
    text = (ROOT / lock).read_text()
    return {_norm(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", text, re.M)}


def _direct(lock: str) -> set[str]:
    """The packages a lock says it holds because pyproject.toml asks for them (uv's `# via` notes)."""
    blocks = re.split(r"^(?=[A-Za-z0-9])", (ROOT / lock).read_text(), flags=re.M)
    return {_norm(b.split("==")[0]) for b in blocks if "sda-pipeline (pyproject.toml)" in b}


def _requirements(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + (project["optional-dependencies"][extra] if extra else [])
    return [Requirement(r) for r in reqs]


# the locks are resolved for Python 3.11.0 and up (tools/lock.sh --python-version): what a requirement needs
# there (redis: async-timeout below 3.11.3) is locked, and installed, on this interpreter too
PYTHONS = ({}, {"python_version": "3.11", "python_full_version": "3.11.0"})


def _closure(roots: list[Requirement]) -> set[str]:
    """Every distribution the requirements pull in on this interpreter or on 3.11.0 (:data:`PYTHONS`),
    through the installed metadata."""
    seen, todo = set(), [(r, "") for r in roots]
    while todo:
        req, extra = todo.pop()
        if req.marker and not any(req.marker.evaluate({"extra": extra, **py}) for py in PYTHONS):
            continue
        name = _norm(req.name)
        wanted = [""] + sorted(req.extras)
        key = (name, tuple(wanted))
        if key in seen:
            continue
        seen.add(key)
        for spec in metadata.distribution(req.name).requires or []:
            todo.extend((Requirement(spec), e) for e in wanted)
    return {name for name, _ in seen}


def _installed() -> dict[str, str]:
    site = sysconfig.get_paths()["purelib"]
    return {_norm(d.metadata["Name"]): d.version for d in metadata.distributions(path=[site])}


@pytest.mark.parametrize("lock, extra", [("requirements.lock", None), ("requirements-dev.lock", "dev")])
def test_each_requirement_is_pinned_at_a_version_it_admits(lock, extra):
    pins = _pins(lock)
    for req in _requirements(extra):
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        name = _norm(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in {lock}: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{lock} pins {req.name}=={pins[name]}, pyproject.toml asks for {req}: run `make lock`"


@pytest.mark.parametrize("lock, extra", [("requirements.lock", None), ("requirements-dev.lock", "dev")])
def test_a_lock_was_written_from_todays_requirements(lock, extra):
    """Also fails for a dependency added to pyproject.toml that the lock already holds for another reason."""
    asked = {_norm(r.name) for r in _requirements(extra) if not r.marker or r.marker.evaluate({"extra": ""})}
    assert _direct(lock) == asked, (f"{lock} is stale: asked by pyproject.toml, not by the lock: "
                                    f"{sorted(asked - _direct(lock))}; the other way: {sorted(_direct(lock) - asked)}: "
                                    "run `make lock`")


def test_the_pipeline_lock_takes_the_dev_locks_versions():
    run, dev = _pins("requirements.lock"), _pins("requirements-dev.lock")
    assert {name: dev.get(name) for name in run} == run


def _venv_is_dev_locked() -> bool:
    stamp = Path(sys.prefix, ".installed")
    return stamp.is_file() and stamp.read_text().startswith("dev ")


@pytest.mark.skipif(not _venv_is_dev_locked(), reason="needs the venv of `make install-dev` (tools/install.sh dev)")
def test_the_venv_holds_exactly_the_dev_lock():
    installed = {k: v for k, v in _installed().items() if k not in NOT_LOCKED}
    pins = _pins("requirements-dev.lock")
    assert installed == pins, (f"not locked: {sorted(set(installed) - set(pins))}; "
                               f"locked, missing: {sorted(set(pins) - set(installed))}; "
                               f"other versions: {sorted(k for k in pins.keys() & installed if pins[k] != installed[k])}")


@pytest.mark.skipif(not _venv_is_dev_locked(), reason="needs the venv of `make install-dev` (tools/install.sh dev)")
@pytest.mark.parametrize("lock, extra", [("requirements.lock", None), ("requirements-dev.lock", "dev")])
def test_a_lock_holds_what_its_requirements_pull_in_and_no_more(lock, extra):
    wanted, pinned = _closure(_requirements(extra)), set(_pins(lock))
    assert wanted <= pinned, f"pulled in by pyproject.toml but not in {lock}: {sorted(wanted - pinned)}: run `make lock`"
    assert pinned <= wanted, f"in {lock} but nothing in pyproject.toml needs it: {sorted(pinned - wanted)}: run `make lock`"
