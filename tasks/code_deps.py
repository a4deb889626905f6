"""Each stage's code deps in ``dvc.yaml``: the import closure of ``tasks/<stage>.py``.

A stage's result depends on every project module it can import, so ``dvc.yaml`` lists them all
(package ``__init__`` files included): an edit to any of them makes DVC re-run the stage. The list
is computed here from the source (every ``import`` statement, also those inside functions, so
lazily imported modules count) rather than written by hand.

    python -m tasks.code_deps            # print each stage's closure
    python -m tasks.code_deps --check    # exit 1 and name what dvc.yaml misses or lists in excess
    python -m tasks.code_deps --write    # rewrite the code part of each stage's deps in dvc.yaml
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

from sda.plugins import PLUGIN_PACKAGES, plugin_modules
from tasks import STAGES

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sda", "tasks")

__all__ = ["import_closure", "stage_code_deps"]


def _module_file(module: str, root: Path) -> Path | None:
    """``sda.x.y`` -> ``sda/x/y.py`` or ``sda/x/y/__init__.py`` under ``root``; None if neither exists."""
    base = root.joinpath(*module.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _with_packages(module: str) -> list[str]:
    """A module and the packages above it (importing ``sda.x.y`` runs ``sda`` and ``sda.x`` first)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _imports(path: Path, module: str, packages: tuple[str, ...] | None = PACKAGES) -> set[str]:
    """Modules of ``packages`` (default: the project's; ``None``: any) that ``path`` (the module
    ``module``) imports anywhere in its body."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .y import z
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # from pkg import submodule
    return {m for m in found if m and (packages is None or m.split(".")[0] in packages)}


def import_closure(module: str, root: Path = ROOT) -> list[str]:
    """Repo-relative paths of every project file that importing ``module`` can load, sorted."""
    seen: dict[str, Path] = {}
    todo = _with_packages(module)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        f = _module_file(m, root)
        if f is None:  # a name imported from a module (from sda.x import func), not a module
            continue
        seen[m] = f
        for imported in _imports(f, m):
            todo.extend(_with_packages(imported))
        if m in PLUGIN_PACKAGES:  # its __init__ imports every plugin module of it (sda.plugins)
            todo.extend(f"{m}.{p}" for p in plugin_modules(m, root))
    return sorted(str(f.relative_to(root)) for f in seen.values())


def stage_code_deps(stage: str, root: Path = ROOT) -> list[str]:
    """The code deps of a stage: the import closure of ``tasks.<stage>``."""
    return import_closure(f"tasks.{stage}", root)


_STAGE = re.compile(r"^  (?P<name>\w+):\n(?P<body>(?:^(?:    .*|\s*)\n)*)", re.M)
_DEPS = re.compile(r"^    deps:\n(?P<items>(?:^      - .*\n)*)", re.M)


def _dvc_deps(text: str) -> dict[str, list[str]]:
    out = {}
    for st in _STAGE.finditer(text):
        deps = _DEPS.search(st["body"])
        out[st["name"]] = [line.split("- ", 1)[1].strip() for line in deps["items"].splitlines()] if deps else []
    return out


def rewrite(text: str, root: Path = ROOT) -> str:
    """``dvc.yaml`` text with each stage's ``.py`` deps replaced by its import closure (the data
    deps are kept, after the code)."""

    def stage_block(st: re.Match) -> str:
        name, body = st["name"], st["body"]
        if name not in STAGES:
            return st.group(0)

        def deps_block(d: re.Match) -> str:
            items = [line.split("- ", 1)[1].strip() for line in d["items"].splitlines()]
            data = [i for i in items if not i.endswith(".py")]
            return "    deps:\n" + "".join(f"      - {i}\n" for i in stage_code_deps(name, root) + data)

        return f"  {name}:\n" + _DEPS.sub(deps_block, body, count=1)

    return _STAGE.sub(stage_block, text)


def check(dvc_yaml: Path, root: Path = ROOT) -> list[str]:
    """Problems: per stage, the closure's modules that ``dvc.yaml`` misses and the listed ``.py``
    deps the stage cannot import. Empty when the file is current."""
    listed = _dvc_deps(dvc_yaml.read_text())
    problems = []
    for stage in STAGES:
        code = {d for d in listed.get(stage, []) if d.endswith(".py")}
        want = set(stage_code_deps(stage, root))
        if missing := sorted(want - code):
            problems.append(f"{stage}: dvc.yaml misses {', '.join(missing)}")
        if extra := sorted(code - want):
            problems.append(f"{stage}: dvc.yaml lists {', '.join(extra)}, which it does not import")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tasks.code_deps", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dvc-yaml", type=Path, default=ROOT / "dvc.yaml")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 when dvc.yaml's code deps are not current")
    mode.add_argument("--write", action="store_true", help="rewrite the code deps in dvc.yaml")
    args = ap.parse_args(argv)
    if args.check:
        problems = check(args.dvc_yaml)
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print("run `python -m tasks.code_deps --write` to bring dvc.yaml up to date", file=sys.stderr)
        return 1 if problems else 0
    if args.write:
        text = args.dvc_yaml.read_text()
        new = rewrite(text)
        tmp = args.dvc_yaml.with_name(f".{args.dvc_yaml.name}.tmp")
        tmp.write_text(new)
        tmp.replace(args.dvc_yaml)
        print(f"{args.dvc_yaml}: {'updated' if new != text else 'already current'}")
        return 0
    for stage in STAGES:
        print(f"{stage}: {' '.join(stage_code_deps(stage))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
