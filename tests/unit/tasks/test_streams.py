"""The streams stage (tasks.streams) as a command."""


def test_the_streams_stage_refuses_a_method_section_no_method_declares(tmp_path):
    """The stage reads its params before the methods register: a typo'd section is still one line, exit 2."""
    import subprocess
    import sys

    import yaml

    from tests.support import ROOT, subprocess_env

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["streams"]["lamee"] = {"knn": 3}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-m", "tasks.streams", "--params", str(tmp_path / "params.yaml")], cwd=ROOT,
                       env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "streams.lamee: unknown parameter" in r.stderr and "Traceback" not in r.stderr, r.stderr
