import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sda.params import CORRUPTIONS, Params, ParamsError, parse_params
from tasks.common import load_params

ROOT = Path(__file__).resolve().parents[1]


def test_repo_params_validate():
    p = load_params(ROOT / "params.yaml")
    assert p.profile == "embedded"
    assert p.target_data.corruptions == CORRUPTIONS
    assert p.target_data.split == "test"


def test_empty_mapping_gives_defaults():
    assert parse_params({}) == Params()


def test_unknown_key_is_named():
    with pytest.raises(ParamsError, match=r"projection\.scael: unknown parameter"):
        parse_params({"projection": {"scael": 3}})


def test_bad_value_is_named_with_input():
    with pytest.raises(ParamsError, match=r"source_model\.epochs: .*greater than or equal to 1.*got -3"):
        parse_params({"source_model": {"epochs": -3}})


def test_cross_field_rule_names_section():
    with pytest.raises(ParamsError, match=r"projection: .*N=30 must be smaller than respacing=20"):
        parse_params({"projection": {"N": 30, "respacing": 20}})


def test_unknown_corruption_and_profile():
    with pytest.raises(ParamsError, match="unknown corruptions \\['glitter'\\]"):
        parse_params({"target_data": {"corruptions": ["fog", "glitter"]}})
    with pytest.raises(ParamsError, match="profile"):
        parse_params({"profile": "mnist"})


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("runtime: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(f)


def test_stage_cli_rejects_bad_params_before_work(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["diffusion_finetune"]["lr"] = "fast"
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-m", "tasks.source_data", "--params", str(bad)], cwd=tmp_path,
                       capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2
    assert "diffusion_finetune.lr" in r.stderr
    assert not (tmp_path / "data").exists()  # nothing was written
