"""Copies of this repository in which the real pipeline runs (the e2e tests), and running commands
in them with the project's environment."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from sda.config import PROFILE_SECTIONS
from sda.cores import choose_wait_policy
from tasks import STAGES
from tests.support.datasets import IMAGENET_CORRUPTIONS, make_imagenet_assets

ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "runtime": {"threads": 2},
    "source_model": {"epochs": 8},
    "diffusion_finetune": {"train_steps": 40, "batch_size": 32},
    "synth_generate": {"per_class": 3, "steps": 4, "batch_size": 4, "shard_size": 8},
    "projection": {"respacing": 10, "N": 3, "batch_size": 64},
    "classifier_align": {"epochs": 1},
    # the val split (180 images per domain): a third of the test split's projection and evaluation
    # work; shards of 60 keep several shard jobs per domain for the kill / resume tests
    "target_data": {"split": "val", "corruptions": ["gaussian_noise", "pixelate"], "shard_maxcount": 60},
    "relabel": {"min_age_seconds": 0, "upload_grace_seconds": 0, "batch_size": 8,
                "monitor": {"reference_images": 128}},  # each new label store labels its reference once
    # 40 images per domain in batches of 10 (a class-sorted batch then holds 1-2 of the 10 classes); MEMO
    # on 4 images, batch 1 (a sliding window of 16) on 12
    # EATA's Fisher on 64 source images, CoTTA with 2 augmentations on 20 images a domain
    "streams": {"images_per_domain": 40, "window": 16, "coupling_images": 8,
                "memo": {"views": 2, "images_per_domain": 4}, "eata": {"fisher_images": 64},
                "cotta": {"augmentations": 2, "images_per_domain": 20},
                "streams": {"iid": {"order": "iid", "batch_size": 10}, "mixed": {"order": "mixed", "batch_size": 10},
                            "class_sorted": {"order": "correlated", "batch_size": 10, "delta": 0.0},
                            "batch1": {"order": "iid", "batch_size": 1, "images_per_domain": 12}}},
}


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # the copy must run from its own files: drop this checkout from PYTHONPATH, keep the rest
    # (a GPU machine may hold the project's dependencies in a PYTHONPATH folder)
    keep = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT]
    env["PYTHONPATH"] = os.pathsep.join(keep)
    env["SDA_LOG_LEVEL"] = "WARNING"
    choose_wait_policy(env)  # one OpenMP policy for every command started with this env
    return env


def sh(cwd: Path, *cmd: str, check: bool = True, timeout: float = 900,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd`` with the project's environment (plus ``env``); a command still running
    after ``timeout`` seconds is killed and fails the test (pytest-timeout is the outer guard)."""
    try:
        r = subprocess.run(list(cmd), cwd=cwd, env={**subprocess_env(), **(env or {})}, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"{' '.join(cmd)} still running after {timeout:.0f} s:\n{err.stdout!s:.3000}") from None
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def project_files() -> list[str]:
    """The checkout's files as git sees them; without git (a copied work tree), the code folders."""
    try:
        return subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        files = [str(p.relative_to(ROOT)) for d in ("sda", "tasks", "flows") for p in (ROOT / d).rglob("*.py")]
        return files + [f for f in ("params.yaml", "dvc.yaml", "pyproject.toml", ".dvcignore")
                        if (ROOT / f).is_file()]


def copy_repo(dst: Path, overrides: dict | None = None, git: bool = True) -> None:
    """``dst``: the project's files with TINY params plus ``overrides``; a git repository when ``git``."""
    for f in project_files():
        if f.startswith(("data/", "metrics/", "tests/", "bench/")) or f == "dvc.lock":
            continue
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    for key, values in (overrides or {}).items():
        if key == "profiles":  # a profile given replaces that profile's overrides; every section stays named
            for name, sections in values.items():
                params[key][name] = {**{s: {} for s in PROFILE_SECTIONS}, **sections}
        elif isinstance(values, dict) and isinstance(params.get(key), dict):
            params[key].update(values)
        else:
            params[key] = values
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not git:
        return
    sh(dst, "git", "init", "-q")
    sh(dst, "git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    sh(dst, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny")


def repro_every_stage(root: Path, until: str | None = None) -> Path:
    """``dvc repro [until]`` in ``root``; asserts every stage (up to ``until``, in pipeline order) ran."""
    r = sh(root, "dvc", "repro", *([until] if until else []))
    for stage in STAGES if until is None else STAGES[: STAGES.index(until) + 1]:
        assert f"Running stage '{stage}'" in r.stdout, f"{stage} did not run:\n{r.stdout[-2000:]}"
    return root


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Path]) -> Path:
    """``build(root)`` once per test run, and a private copy of it for this process.

    Without pytest-xdist this is ``build`` in a new folder. Under xdist (``make test`` runs one worker
    per core) the first worker to ask builds it in the run's shared folder while the others wait on a
    file lock, and each copies the result (a second or so), so a test that changes its repository
    changes it for its own worker only, as in one process. A failed build leaves no marker: the next
    worker to ask builds it again and fails the same way."""
    own = factory.mktemp(name) / "repo"
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(own)
    shared = factory.getbasetemp().parent / f"shared-{name}"  # the run's folder, above each worker's
    with FileLock(f"{shared}.lock"):
        if not (shared / "built").is_file():
            shutil.rmtree(shared, ignore_errors=True)
            build(shared / "repo")
            (shared / "built").touch()
    shutil.copytree(shared / "repo", own, symlinks=True)
    return own


def make_tiny_repo(root: Path) -> Path:
    """Copy the checkout's tracked files to ``root`` with TINY params and ``dvc repro`` it."""
    root.mkdir(parents=True)
    copy_repo(root)
    return repro_every_stage(root)


IMAGENET_TINY = {
    "synth_generate": {"per_class": 2, "steps": 5, "guidance_scale": 1.0, "batch_size": 3, "shard_size": 4},
    "projection": {"respacing": 10, "N": 3, "D": 4, "scale": 6.0, "batch_size": 4},
    # the imagenet profile's own classifier_align override (replaced whole by this one): the paper's
    # recipe, its last epoch (ImageNet's source has no val split to select one on)
    "classifier_align": {"recipe": "paper", "select_epoch": False},
    "target_data": {"corruptions": IMAGENET_CORRUPTIONS, "shard_maxcount": 4},
    "source_model": {"arch": "resnet18"},
}


def make_imagenet_repo(root: Path) -> Path:
    """A copy of this repository with ``profile: imagenet`` over tiny local assets, after ``dvc repro``."""
    root.mkdir(parents=True)
    inet = make_imagenet_assets(root)
    copy_repo(root, {"profile": "imagenet", "imagenet": inet, "profiles": {"imagenet": IMAGENET_TINY}})
    return repro_every_stage(root)
