"""The ``sda`` console script: one name for the project's commands, each the module's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import module_for

ROOT = Path(__file__).resolve().parents[3]


def test_commands_map_to_their_modules():
    assert module_for(["run", "--profile", "folder"]) == ("flows.pipeline", ["--profile", "folder"])
    assert module_for(["relabel"]) == ("flows.relabel", [])
    assert module_for(["serve", "--port", "4300"]) == ("flows.serve", ["--port", "4300"])
    assert module_for(["stage", "synth_align", "--params", "p.yaml"]) == ("tasks.synth_align", ["--params", "p.yaml"])


@pytest.mark.parametrize("argv, says", [(["stage", "synth"], "unknown stage 'synth'"), (["train"], "unknown command"),
                                        ([], "a command is needed")])
def test_anything_else_is_a_usage_error(argv, says, capsys):
    with pytest.raises(SystemExit) as exc:
        module_for(argv)
    assert exc.value.code == 2 and says in capsys.readouterr().err


def test_a_stage_command_is_the_modules_own():
    r = subprocess.run([sys.executable, "-m", "flows.cli", "stage", "evaluate", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "python -m tasks.evaluate" in r.stdout and "--params" in r.stdout
