"""A stage command run by the wrong interpreter (DVC outside the venv) re-runs itself with the
project's, or ends in a message that says what to do and exit status 2, before any work.
(``runtime.device: cuda`` without a GPU: tests/unit/sda/test_accel.py.)"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")


def _lacks_torch(python: str | None) -> bool:
    if python is None:
        return False
    r = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
                       capture_output=True, text=True, timeout=60)
    return r.stdout.strip() == "True"


needs_bare_python = pytest.mark.skipif(not _lacks_torch(SYSTEM_PYTHON) or not (ROOT / ".venv" / "bin" / "python").is_file(),
                                       reason="needs a system python3 without torch and the project's .venv")


@pytest.mark.slow
@needs_bare_python
def test_a_stage_run_by_a_bare_python_reruns_with_the_project_venv():
    """What `dvc repro` does without the venv activated: `python -m tasks.<stage>` from PATH."""
    r = subprocess.run([SYSTEM_PYTHON, "-m", "tasks.source_data", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "usage: python -m tasks.source_data" in r.stdout


@pytest.mark.slow
@needs_bare_python
def test_without_a_venv_a_bare_python_says_what_to_do(tmp_path):
    shutil.copytree(ROOT / "tasks", tmp_path / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([SYSTEM_PYTHON, "-m", "tasks.source_data"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 2
    assert "lacks torch" in r.stderr and "make install" in r.stderr and "Traceback" not in r.stderr
