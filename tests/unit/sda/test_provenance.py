"""sda.provenance: the fingerprint of JSON-able content, the hash of the params that fix a result (and
only those), and the code revision that made it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import sda.domains  # noqa: F401 - registers the domains' sections, as every stage does
from sda.config import parse_params
from sda.provenance import code_version, fingerprint, params_hash


def test_a_fingerprint_ignores_key_order_and_sees_every_value():
    a = fingerprint({"b": [1, 2], "a": {"y": 1, "x": 2}})
    assert a == fingerprint({"a": {"x": 2, "y": 1}, "b": [1, 2]})
    assert len(a) == 64 and int(a, 16) >= 0
    assert a != fingerprint({"b": [2, 1], "a": {"y": 1, "x": 2}})
    assert fingerprint({"p": Path("x/y")}) == fingerprint({"p": "x/y"})  # non-JSON values as their str


BASE = params_hash(parse_params({}))


@pytest.mark.parametrize("change", [
    {"evaluate": {"batch_size": 7}},
    {"projection": {"N": 5}},
    {"runtime": {"seed": 3}},
    {"runtime": {"threads": 1}},
    {"embedded": {"image_size": 32}},  # the active profile's domain section
    {"profiles": {"embedded": {"evaluate": {"batch_size": 7}}}},
])
def test_what_fixes_a_result_changes_the_params_hash(change):
    assert params_hash(parse_params(change)) != BASE


@pytest.mark.parametrize("change", [
    {"relabel": {"batch_size": 3}},
    {"relabel": {"monitor": {"min_images": 7}}},
    {"runtime": {"device": "cpu"}},
    {"runtime": {"workers": 3}},
    {"imagenet": {"image_size": 64}},  # another domain's section: not read by this profile
    {"profiles": {"imagenet": {"evaluate": {"batch_size": 7}}}},  # another profile's overrides
])
def test_what_only_says_where_it_runs_leaves_the_params_hash(change):
    assert params_hash(parse_params(change)) == BASE


def test_a_profile_override_hashes_as_the_same_value_set_directly():
    assert params_hash(parse_params({"profiles": {"embedded": {"evaluate": {"batch_size": 7}}}})) == \
        params_hash(parse_params({"evaluate": {"batch_size": 7}}))


def test_the_imagenet_profile_hashes_its_own_section_not_the_embedded_one():
    inet = params_hash(parse_params({"profile": "imagenet"}))
    assert params_hash(parse_params({"profile": "imagenet", "embedded": {"image_size": 32}})) == inet
    assert params_hash(parse_params({"profile": "imagenet", "imagenet": {"image_size": 64}})) != inet


def test_outside_a_git_checkout_the_code_version_is_unknown(tmp_path):
    assert code_version(tmp_path) == "unknown"
    assert code_version(tmp_path / "missing") == "unknown"


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_the_code_version_is_the_revision_dirty_only_for_changes_to_the_pipelines_code(tmp_path):
    (tmp_path / "sda").mkdir()
    (tmp_path / "sda" / "m.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("hi\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "c")
    rev = _git(tmp_path, "rev-parse", "HEAD")
    assert code_version(tmp_path) == rev
    (tmp_path / "README.md").write_text("changed\n")  # not code
    (tmp_path / "sda" / "new.py").write_text("untracked\n")  # untracked: not counted
    assert code_version(tmp_path) == rev
    (tmp_path / "sda" / "m.py").write_text("x = 2\n")
    assert code_version(tmp_path) == f"{rev}-dirty"


def test_a_domain_setting_written_at_its_default_hashes_as_left_out():
    assert params_hash(parse_params({"embedded": {"image_size": 16, "max_shift": 1}})) == BASE
