"""How DVC starts a stage (``sh tasks/stage.sh <stage>``) from a shell without the project's python:
``.venv/bin/dvc repro`` runs with the checkout's ``.venv``, and with no python or one without the
project's packages the command ends in one line that says what to do, before any work.
(``runtime.device: cuda`` without a GPU: tests/unit/sda/test_accel.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import copy_repo

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)  # the project's environment, wherever the tests run from


def _bin_without_python(tmp_path: Path) -> Path:
    """A PATH folder with ``sh`` and ``git`` only: no ``python`` or ``python3`` to find."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("sh", "git"):
        if found := shutil.which(tool):
            (bindir / tool).symlink_to(found)
    return bindir


@pytest.mark.slow
@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs the project's packages in a virtual environment")
def test_dvc_repro_from_a_shell_without_python_runs_with_the_checkouts_venv(tmp_path):
    """The issue's case: `.venv/bin/dvc repro` on a machine whose PATH holds no `python`."""
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    (repo / ".venv").symlink_to(VENV, target_is_directory=True)
    env = {"PATH": str(_bin_without_python(tmp_path)), "HOME": str(tmp_path), "SDA_LOG_LEVEL": "WARNING"}
    r = subprocess.run([str(VENV / "bin" / "dvc"), "repro", "--single-item", "source_data"], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Running stage 'source_data'" in r.stdout
    assert json.loads((repo / "data" / "source_data" / "classes.json").read_text())


def test_without_any_python_the_stage_command_says_what_to_do(tmp_path):
    shutil.copytree(ROOT / "tasks", tmp_path / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run(["/bin/sh", "tasks/stage.sh", "source_data"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60, env={"PATH": str(_bin_without_python(tmp_path))})
    assert r.returncode == 127
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no python" in lines[0] and "make install" in lines[0] and "make repro" in lines[0]


def test_a_python_without_the_projects_packages_says_what_to_do():
    """`python -S`: the same interpreter without its site-packages, as a system python would be."""
    r = subprocess.run([sys.executable, "-S", "-m", "tasks.source_data"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "lacks torch" in lines[0] and "make repro" in lines[0], r.stderr
