"""What a result was made from: the content fingerprint of params and plans, the params that fix
the pipeline's results, and the code revision."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from typing import Any

from sda.config import Params

__all__ = ["RESULT_PARAMS", "RESULT_RUNTIME", "code_version", "fingerprint", "params_hash"]

# What fixes a result: the active domain's section (the one named like the profile: embedded, imagenet or
# folder; the other domains' are not read), every stage section but relabel, and of runtime these keys
# (the device, workers and scheduler change where it runs, not what it computes), all with the active
# profile's overrides merged. evaluate's DVC params list the same (`${profile}`, `profiles.${profile}`;
# tests/unit/tasks/test_code_deps.py checks), so the params hash that evaluate.json records cannot go stale.
RESULT_PARAMS = ("profile", "source_model", "diffusion_finetune", "synth_generate",
                 "projection", "classifier_align", "target_data", "evaluate")
RESULT_RUNTIME = ("seed", "threads", "deterministic", "loader_workers")


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (params, job list, input hashes)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def params_hash(params: Params) -> str:
    """sha256 of the resolved params (profile merged) that fix the pipeline's results."""
    d = json.loads(params.model_dump_json())
    domain = json.loads(params.domain_section(params.profile).model_dump_json())  # validated: its defaults filled in
    return fingerprint({**{k: d[k] for k in RESULT_PARAMS}, params.profile: domain,
                        "runtime": {k: d["runtime"][k] for k in RESULT_RUNTIME}})


def code_version(root: str | os.PathLike[str] = ".") -> str:
    """The git revision of the code at ``root`` (``<sha>`` or ``<sha>-dirty`` when tracked files
    under sda/, tasks/ or dvc.yaml / params.yaml differ from it); ``unknown`` outside a git checkout."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True,  # noqa: E731
                                        check=True, timeout=30).stdout.strip()
        rev = run("rev-parse", "HEAD")
        dirty = run("status", "--porcelain", "--untracked-files=no", "--", "sda", "tasks", "dvc.yaml", "params.yaml")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}-dirty" if dirty else rev
