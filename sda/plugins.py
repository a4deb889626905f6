"""The packages whose modules register themselves, and which modules of theirs do: written once here.

A domain (:mod:`sda.domains`) and a test-time baseline (:mod:`sda.method.baselines`) are each one module
of their package that registers itself on import; adding one is adding its module. Every module of such a
package is a plugin but the support modules listed here. Three readers list them from the files, without
importing any: :mod:`sda.config` (a domain's module names the top-level params section it may declare),
the packages themselves (their ``__init__`` imports their plugins, :func:`import_plugins`) and
:mod:`tasks.code_deps` (a stage that imports the package depends on every plugin of it). This module
imports nothing of the project.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PLUGIN_PACKAGES", "import_plugins", "plugin_modules"]

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PluginPackage:
    """``built_in``: the plugins shipped, in the order they register (the first domain is the default
    profile; the baselines' order is the streams table's); any other plugin module follows, sorted by
    name. ``support``: the package's modules that are not plugins (shared code, a command)."""

    built_in: tuple[str, ...]
    support: tuple[str, ...]


PLUGIN_PACKAGES: dict[str, PluginPackage] = {
    "sda.domains": PluginPackage(built_in=("embedded", "imagenet", "folder"),
                                 support=("check", "corruptions", "digits", "registry")),
    "sda.method.baselines": PluginPackage(built_in=("memo", "bn", "tent", "sar", "eata", "cotta", "rotta", "lame", "roid"),
                                          support=("augment", "base")),
}


def plugin_modules(package: str, root: Path = ROOT) -> tuple[str, ...]:
    """The plugin modules of ``package`` (a key of :data:`PLUGIN_PACKAGES`), names without the package:
    the built-in ones in their order, then every other module file of the package under ``root`` that is
    not a support module, sorted. Reads the folder, imports nothing."""
    spec = PLUGIN_PACKAGES[package]
    folder = root.joinpath(*package.split("."))
    found = {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")}
    others = sorted(found - set(spec.built_in) - set(spec.support))
    return tuple(m for m in spec.built_in if m in found) + tuple(others)


def import_plugins(package: str) -> None:
    """Import every plugin module of ``package`` (each registers itself), in :func:`plugin_modules` order."""
    for module in plugin_modules(package):
        importlib.import_module(f"{package}.{module}")
