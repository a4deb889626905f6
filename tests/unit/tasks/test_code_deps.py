"""dvc.yaml's code deps are each stage's import closure (tasks/code_deps.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tasks import STAGES
from tasks.code_deps import PACKAGES, _imports, check, import_closure, rewrite, stage_code_deps

ROOT = Path(__file__).resolve().parents[3]


def test_dvc_yaml_lists_every_imported_module():
    assert check(ROOT / "dvc.yaml") == [], "run `python -m tasks.code_deps --write`"


def test_dvc_lock_records_the_code_that_is_committed():
    """Each code dep's hash in dvc.lock is its file's: a module changed without its stages' lock entries
    makes every fresh clone re-run them (a stale entry cost `make run` the 3-minute streams stage). After a
    code-only change: `dvc repro -f -s <stage>` where the outputs could change, `dvc commit -f <stage>` where
    they cannot (same bytes), then commit dvc.lock with the code."""
    import hashlib

    import yaml

    stale = []
    for stage, entry in (yaml.safe_load((ROOT / "dvc.lock").read_text()) or {}).get("stages", {}).items():
        for dep in entry.get("deps") or []:
            path = ROOT / dep["path"]
            if path.suffix == ".py" and path.is_file() and hashlib.md5(path.read_bytes()).hexdigest() != dep.get("md5"):
                stale.append(f"{stage}: {dep['path']}")
    assert stale == [], "dvc.lock holds other versions of: " + ", ".join(stale)


def test_closures_hold_what_the_stages_import():
    for stage in STAGES:
        deps = stage_code_deps(stage)
        assert f"tasks/{stage}.py" in deps and "tasks/__init__.py" in deps and "sda/config.py" in deps
    # the modules the issue found missing by hand
    assert {"sda/models/diffusion.py", "sda/io/shards.py", "sda/runtime.py"} <= set(stage_code_deps("synth_align"))
    assert "sda/models/dit.py" in stage_code_deps("synth_generate")
    assert "tasks/projection_stage.py" in stage_code_deps("target_project")


def test_no_stage_imports_another_stage():
    """Shared stage code lives in tasks/common.py or tasks/projection_stage.py, never in a stage."""
    for stage in STAGES:
        others = {f"tasks/{s}.py" for s in STAGES if s != stage}
        assert not others & set(stage_code_deps(stage)), f"{stage} imports {others & set(stage_code_deps(stage))}"


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_closure_follows_lazy_relative_and_package_imports(tmp_path):
    _write(tmp_path, {
        "tasks/__init__.py": "",
        "tasks/stage.py": "from sda.a import f\nimport json\n",
        "sda/__init__.py": "",
        "sda/a.py": "def f():\n    from sda.pkg import b  # lazy, a submodule through its package\n",
        "sda/pkg/__init__.py": "from .c import g\n",
        "sda/pkg/b.py": "x = 1\n",
        "sda/pkg/c.py": "from ..d import h\n",
        "sda/d.py": "h = 1\n",
        "sda/unused.py": "",
    })
    assert import_closure("tasks.stage", tmp_path) == [
        "sda/__init__.py", "sda/a.py", "sda/d.py", "sda/pkg/__init__.py", "sda/pkg/b.py", "sda/pkg/c.py",
        "tasks/__init__.py", "tasks/stage.py"]


def test_check_names_a_missing_dep_and_write_restores_it(tmp_path):
    text = (ROOT / "dvc.yaml").read_text()
    broken = text.replace("      - sda/io/shards.py\n", "", 1).replace(
        "      - tasks/evaluate.py\n", "      - tasks/evaluate.py\n      - sda/relabel/job.py\n", 1)
    f = tmp_path / "dvc.yaml"
    f.write_text(broken)
    problems = check(f)
    assert any(p.startswith("source_data: dvc.yaml misses sda/io/shards.py") for p in problems), problems
    assert any("evaluate: dvc.yaml lists sda/relabel/job.py" in p for p in problems), problems
    r = subprocess.run([sys.executable, "-m", "tasks.code_deps", "--check", "--dvc-yaml", str(f)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "misses sda/io/shards.py" in r.stderr and "--write" in r.stderr
    assert rewrite(broken) == text  # data deps, params and comments kept


def test_evaluate_depends_on_every_param_its_hash_covers():
    """metrics/evaluate.json records a hash of RESULT_PARAMS (+ runtime keys): evaluate must re-run
    whenever one of them changes, or the recorded hash goes stale."""
    import yaml

    from sda.config import PROFILE_SECTIONS
    from sda.provenance import RESULT_PARAMS, RESULT_RUNTIME

    listed = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["evaluate"]["params"])
    overrides = {f"profiles.${{profile}}.{s}" for s in PROFILE_SECTIONS if s in RESULT_PARAMS}
    assert set(RESULT_PARAMS) | {f"runtime.{k}" for k in RESULT_RUNTIME} | {"${profile}"} | overrides <= listed


# the layers, top to bottom (docs/development.md): a module imports only its own layer and those above
LAYERS = ("sda", "sda.io", "sda.models", "sda.method", "sda.domains", "sda.relabel", "tasks", "flows")


def _layer(module: str) -> int:
    return max(i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".") or i == 0)


def _project_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports (explicitly: a package's __init__ runs implicitly)."""
    files = {}
    for f in sorted([*ROOT.glob("sda/**/*.py"), *ROOT.glob("tasks/*.py"), *ROOT.glob("flows/*.py")]):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return {m: {i for i in _imports(f, m, PACKAGES + ("flows",)) if i in files and i != m} for m, f in files.items()}


def test_imports_run_down_the_layers_without_a_circle():
    graph = _project_imports()
    up = [f"{m} -> {i}" for m, deps in graph.items() for i in deps if _layer(i) > _layer(m)]
    assert not up, f"imports that run up a layer: {up}"
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for i in sorted(graph[m]):
            assert state.get(i) != 1, f"import circle: {' -> '.join(path[path.index(i):] + [m, i]) if i in path else m + ' -> ' + i}"
            if i not in state:
                visit(i, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_config_is_a_leaf():
    """sda/config.py checks the params' shape; which profiles exist is the domain registry's."""
    assert import_closure("sda.config") == ["sda/__init__.py", "sda/config.py", "sda/plugins.py"]
    assert import_closure("sda.plugins") == ["sda/__init__.py", "sda/plugins.py"]


def test_a_stage_depends_on_the_domains_only_if_it_imports_them():
    graph = _project_imports()
    for stage in STAGES:
        lists = any(d.startswith("sda/domains/") for d in stage_code_deps(stage))
        imports = any(i == "sda.domains" or i.startswith("sda.domains.") for i in graph[f"tasks.{stage}"])
        assert lists == imports, f"{stage}: lists domain modules {lists}, imports sda.domains {imports}"
    assert not any(d.startswith("sda/domains/") for d in stage_code_deps("synth_align"))


def test_a_stage_module_imports_no_model_library_at_the_top():
    """`--help`, a params error or a missing input answers in about the time of `import torch`:
    diffusers, timm and torchvision load in the functions that use them (bench/stage_imports.py)."""
    heavy = ("diffusers", "timm", "torchvision", "scipy", "dask")
    code = ("import sys\n" + "".join(f"import tasks.{s}\n" for s in STAGES)
            + f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"importing the stage modules loads {r.stdout.strip()}"


def test_a_stage_that_imports_the_domains_depends_on_every_domain_module():
    """sda/domains/__init__.py imports every module of its package but the support ones sda.plugins lists:
    a new domain's module is a code dep of the stages that read domains without any other file naming it."""
    import sda.domains
    from sda.plugins import plugin_modules

    assert set(sda.domains.domain_names()) >= set(plugin_modules("sda.domains"))
    modules = {f"sda/domains/{p.name}" for p in (ROOT / "sda" / "domains").glob("*.py")}
    deps = set(stage_code_deps("source_data"))
    assert modules - deps == {"sda/domains/check.py"}
