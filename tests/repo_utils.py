"""A tiny copy of this repository in which the real pipeline has run (shared by the e2e tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tasks import STAGES

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "runtime": {"threads": 2},
    "source_model": {"epochs": 8},
    "diffusion_finetune": {"train_steps": 40, "batch_size": 32},
    "synth_generate": {"per_class": 3, "steps": 4, "batch_size": 4, "shard_size": 8},
    "projection": {"respacing": 10, "N": 3, "batch_size": 64},
    "classifier_align": {"epochs": 1},
    "target_data": {"corruptions": ["gaussian_noise", "pixelate"], "shard_maxcount": 200},
    "relabel": {"min_age_seconds": 0, "batch_size": 8},
}


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = ""  # the copy must run from its own files
    env["SDA_LOG_LEVEL"] = "WARNING"
    return env


def sh(cwd: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), cwd=cwd, env=subprocess_env(), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def _copy_repo(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if f.startswith(("data/", "metrics/", "tests/", "bench/")) or f == "dvc.lock":
            continue
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(dst, "git", "init", "-q")
    sh(dst, "git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    sh(dst, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny")


def make_tiny_repo(root: Path) -> Path:
    """Copy the checkout's tracked files to ``root`` with TINY params and ``dvc repro`` it."""
    root.mkdir(parents=True)
    _copy_repo(root)
    r = sh(root, "dvc", "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in r.stdout, f"{stage} did not run:\n{r.stdout[-2000:]}"
    return root


