"""The packages whose modules register themselves: their plugins listed from the files, built-in ones first in
their order, support modules never; config, the packages and code_deps read that one list."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sda.plugins import PLUGIN_PACKAGES, plugin_modules

ROOT = Path(__file__).resolve().parents[3]


def _copy(tmp_path: Path, package: str) -> Path:
    """The package's folder copied under ``tmp_path`` (a checkout of its own)."""
    src = ROOT.joinpath(*package.split("."))
    shutil.copytree(src, tmp_path.joinpath(*package.split(".")), ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


@pytest.mark.parametrize("package", sorted(PLUGIN_PACKAGES))
def test_every_module_is_a_plugin_or_named_support_and_the_built_in_ones_come_first(package, tmp_path):
    spec = PLUGIN_PACKAGES[package]
    modules = plugin_modules(package)
    assert modules[: len(spec.built_in)] == spec.built_in
    files = {p.stem for p in ROOT.joinpath(*package.split(".")).glob("*.py")} - {"__init__"}
    assert set(modules) | set(spec.support) == files and not set(modules) & set(spec.support)

    root = _copy(tmp_path, package)
    folder = root.joinpath(*package.split("."))
    (folder / "aaa_new.py").write_text("")  # sorts before every built-in one: still after them
    (folder / "_private.py").write_text("")
    assert plugin_modules(package, root) == (*modules, "aaa_new")
    (folder / f"{spec.built_in[0]}.py").unlink()
    assert plugin_modules(package, root)[0] == spec.built_in[1]  # a built-in module removed is not listed


def test_config_lets_through_a_section_named_like_a_domain_module_and_no_support_module():
    from sda.config import ParamsError, parse_params

    assert set(plugin_modules("sda.domains")) >= {"embedded", "imagenet", "folder"}
    for support in PLUGIN_PACKAGES["sda.domains"].support:
        with pytest.raises(ParamsError, match=rf"{support}: unknown parameter"):
            parse_params({support: {}})


def test_the_packages_import_each_plugin_which_registers_itself():
    import sda.domains
    from sda.method.catalog import method_names

    assert set(plugin_modules("sda.domains")) <= set(sda.domains.domain_names())
    assert set(plugin_modules("sda.method.baselines")) <= set(method_names())
