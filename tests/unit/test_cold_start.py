"""A mistake is answered before the heavy imports (issue 56): every stage command, ``sda check`` and
``sda relabel`` validate params and paths before they import torch, diffusers, timm, Prefect or dask,
and say what is wrong in one line with exit status 2. How long that takes: ``bench/stage_imports.py``.

All the commands run in one fresh interpreter (the process boundary is what is tested: nothing heavy
loaded when the error is printed), each through ``runpy`` as ``python -m`` runs it, from an empty folder
(a command that went on past its check would find no data and load torch: the test sees both).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sda.layout import STAGE_ORDER

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "diffusers", "timm", "prefect", "dask", "distributed", "webdataset", "sklearn")

RUNNER = r"""
import contextlib, io, json, runpy, sys
out, cases, heavy = [], json.loads(sys.argv[1]), json.loads(sys.argv[2])
for module, argv in cases:
    err = io.StringIO()
    sys.argv = [module, *argv]
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code
    out.append({"module": module, "code": code, "stderr": err.getvalue(),
                "heavy": sorted(m for m in heavy if m in sys.modules)})
print(json.dumps(out))
"""


def _run(cases: list[tuple[str, list[str]]], cwd: Path) -> list[dict]:
    r = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(cases), json.dumps(HEAVY)], cwd=cwd,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def _error_lines(result: dict) -> list[str]:
    return [line for line in result["stderr"].splitlines() if line.strip() and " INFO " not in line]


@pytest.fixture
def params_files(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    assert text.count("\nprofile: embedded") == 1 or text.startswith("profile: embedded")
    typo = tmp_path / "typo.yaml"
    typo.write_text(text.replace("profile: embedded", "profil: embedded", 1))
    folder = tmp_path / "folder.yaml"
    folder.write_text(text.replace("profile: embedded", "profile: folder", 1)
                      .replace("  source_dir: null", f"  source_dir: {tmp_path / 'no-photos'}", 1))
    return typo, folder


def test_a_typo_a_missing_folder_and_a_missing_inbox_are_answered_before_the_heavy_imports(params_files, tmp_path):
    typo, folder = params_files
    work = tmp_path / "empty"
    work.mkdir()
    cases = [(f"tasks.{s}", ["--params", str(typo)]) for s in STAGE_ORDER]
    cases += [("sda.domains.check", ["--params", str(typo)])]
    cases += [(m, ["--params", str(folder)]) for m in ("tasks.source_data", "tasks.target_data", "sda.domains.check")]
    cases += [("flows.relabel", ["--root", str(ROOT), "--inbox", str(tmp_path / "no-inbox")])]
    results = _run(cases, work)
    for (module, argv), r in zip(cases, results):
        lines = _error_lines(r)
        assert r["code"] == 2, (module, argv, r)
        assert r["heavy"] == [], f"{module} {argv} imported {r['heavy']} before its answer"
        assert len(lines) == 1 and lines[0].startswith("error"), (module, lines)
    said = [_error_lines(r)[0] for r in results]
    assert all("profil: unknown parameter" in s and str(typo) in s for s in said[: len(STAGE_ORDER) + 1])
    assert all(f"folder.source_dir: {tmp_path / 'no-photos'} does not exist" in s
               for s in said[len(STAGE_ORDER) + 1: -1])
    assert "no-inbox is not a folder" in said[-1] and "relabel.inbox" in said[-1]


def test_a_target_folder_that_is_not_there_is_named_by_its_key(params_files, tmp_path):
    _, folder = params_files
    (tmp_path / "no-photos" / "cat").mkdir(parents=True)
    text = folder.read_text().replace("  target_dirs: {}", f"  target_dirs: {{site_a: {tmp_path / 'site-a'}}}", 1)
    folder.write_text(text)
    [r] = _run([("tasks.target_data", ["--params", str(folder)])], tmp_path)
    assert r["code"] == 2 and r["heavy"] == []
    assert f"folder.target_dirs.site_a: {tmp_path / 'site-a'} does not exist" in r["stderr"]
