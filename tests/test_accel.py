"""The fast-mode plumbing on the CPU (sda.accel, the projection params, bench/gpu.sh's CPU part).
The CUDA behaviour itself is tested in test_gpu.py (``pytest -m gpu``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from repo_utils import ROOT, subprocess_env
from sda.accel import auto_batch_size, autocast, fast_model, name_oom, prefetch
from sda.config import ParamsError, parse_params

PROJ = {"respacing": 10, "N": 3, "D": 4, "scale": 6.0, "per_sample_norm": False, "fix_off_by_one": False,
        "batch_size": 4, "precision": "fp32", "channels_last": False, "compile": "none"}


def _project(unet, scheduler, images, **cfg):
    from sda.method.projection_jobs import project_uint8

    return project_uint8(unet, scheduler, images, {**PROJ, **cfg}, null_label=3,
                         generator=torch.Generator().manual_seed(0))


def _images(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def test_reduced_precision_is_cuda_only_and_validated(tiny_unet, scheduler):
    ref = _project(tiny_unet, scheduler, _images())
    for precision in ("bf16", "fp16"):  # the CPU always runs fp32: identical bytes
        assert np.array_equal(_project(tiny_unet, scheduler, _images(), precision=precision), ref)
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast("cpu", "fp8")
    assert isinstance(autocast("cpu", "bf16"), type(autocast("cpu", "fp32")))  # both no-ops


@pytest.mark.slow
def test_channels_last_keeps_the_projection(tiny_unet, scheduler):
    ref = _project(tiny_unet, scheduler, _images()).astype(int)
    out = _project(tiny_unet, scheduler, _images(), channels_last=True).astype(int)
    assert np.abs(out - ref).max() <= 1
    assert tiny_unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="compile must be one of"):
        fast_model(tiny_unet, compile="fastest")


def test_out_of_memory_becomes_an_error_that_names_the_parameter():
    with pytest.raises(ValueError, match=r"CUDA out of memory projecting a batch of 64.*lower projection\.batch_size"):
        with name_oom("projection.batch_size", 64, "projecting"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with name_oom("projection.batch_size", 64, "projecting"):
        pass  # no error, nothing raised


def test_prefetch_keeps_order_and_reads_ahead():
    read = []

    def items():
        for i in range(5):
            read.append(i)
            yield i

    it = prefetch(items(), lambda i: torch.full((2,), i), "cpu")
    first = next(it)
    assert first[0] == 0 and first[1].tolist() == [0, 0]
    got = [first] + list(it)
    assert [i for i, _ in got] == list(range(5)) and [int(x[0]) for _, x in got] == list(range(5))
    assert list(prefetch([], lambda i: torch.zeros(1), "cpu")) == []


def test_auto_batch_size_on_cpu(tiny_unet, scheduler):
    from sda.method.projection_jobs import projection_batch_size

    assert auto_batch_size(lambda b: None, "cpu", cpu_default=16) == 16
    assert projection_batch_size(tiny_unet, scheduler, {**PROJ, "batch_size": "auto"}, 16, 3) == 32
    assert projection_batch_size(tiny_unet, scheduler, PROJ, 16, 3) == 4


def test_fast_mode_params():
    p = parse_params({"projection": {"batch_size": "auto", "precision": "bf16", "compile": "reduce-overhead",
                                     "channels_last": True}, "synth_generate": {"precision": "fp16"}})
    assert p.projection.batch_size == "auto" and p.projection.compile == "reduce-overhead"
    assert p.synth_generate.precision == "fp16"
    defaults = parse_params({})
    assert (defaults.projection.precision, defaults.projection.compile, defaults.projection.channels_last) == \
        ("fp32", "none", False)
    for bad, key in [({"projection": {"precision": "fp8"}}, "projection.precision"),
                     ({"projection": {"batch_size": "max"}}, "projection.batch_size"),
                     ({"projection": {"compile": True}}, "projection.compile")]:
        with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
            parse_params(bad)
    with pytest.raises(ParamsError, match=r"runtime\.bf16: moved: set projection\.precision: bf16"):
        parse_params({"runtime": {"bf16": True}})


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_device_cuda_without_a_gpu_is_a_user_error(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text().replace("device: auto", "device: cuda"))
    r = subprocess.run([sys.executable, "-m", "tasks.source_data", "--params", str(params)], cwd=tmp_path,
                       env={**subprocess_env(), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-1500:]
    assert "runtime.device is 'cuda' but no CUDA device is visible" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_gpu_check_runs_its_cpu_part(tmp_path):
    """bench/gpu.sh without CUDA: tiny models on the CPU, one table, what was skipped said."""
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--budget-s", "120"], cwd=ROOT,
                       env={**subprocess_env(), "OUT": str(tmp_path), "PYTHON": sys.executable},
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = (tmp_path / "gpu-table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    sections = {row.split(" | ")[0].strip("| ") for row in rows}
    assert {"machine", "adm-tiny", "dit-tiny", "resnet18", "tests"} <= sections, table
    assert not [row for row in rows if "error" in row], table
    if not torch.cuda.is_available():
        assert "skipped: ADM-256" in table and "skipped" in next(r for r in rows if r.startswith("| tests"))
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if cells[1].endswith("profile"):  # the time split by kernel kind adds up to ~100 %
            shares = [int(part.rsplit(" ", 1)[1].rstrip("%")) for part in cells[6].split(": ", 1)[1].split(", ")]
            assert "conv" in cells[6] and 95 <= sum(shares) <= 105, row
        elif cells[0] in {"adm-tiny", "dit-tiny", "resnet18"} and cells[1] != "model" and "skipped" not in cells[6]:
            assert float(cells[3]) > 0, row  # images/s measured
    assert any(row.startswith("| adm-tiny | fp32 profile") for row in rows), table
    assert (tmp_path / "pytest-gpu.log").is_file()
    assert Path(ROOT / "bench" / "gpu.py").is_file()
