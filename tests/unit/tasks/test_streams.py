"""The streams stage (tasks.streams) as a command."""

import runpy
import sys

import pytest
import yaml

from tests.support import ROOT


def test_the_streams_stage_refuses_a_method_section_no_method_declares(tmp_path, monkeypatch, capsys, restore_determinism):
    """The stage reads its params before the methods register: a typo'd section is still one line, exit 2."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["streams"]["lamee"] = {"knn": 3}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)  # an empty checkout: nothing of the repository's is read or written
    monkeypatch.setattr(sys, "argv", ["python -m tasks.streams"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("tasks.streams", run_name="__main__")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "streams.lamee: unknown parameter" in err and "Traceback" not in err, err
