"""The fast-mode plumbing on the CPU (sda.accel, the projection params, bench/gpu.sh's CPU part).
The CUDA behaviour itself is tested in test_gpu.py (``pytest -m gpu``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support import ROOT, subprocess_env
from sda.accel import (ChannelsLastGroupNorm, auto_batch_size, autocast, channels_last_group_norm, fast_model,
                       layout_group_norms, name_oom, prefetch)
from sda.config import ParamsError, Projection, parse_params

PROJ = {"respacing": 10, "N": 3, "D": 4, "scale": 6.0, "per_sample_norm": False, "fix_off_by_one": False,
        "batch_size": 4, "precision": "fp32", "channels_last": False, "compile": "none"}


def _project(unet, scheduler, images, **cfg):
    from sda.method.projector import project_uint8

    return project_uint8(unet, scheduler, images, Projection(**{**PROJ, **cfg}), null_label=3,
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


def layout_copies(fn, x: torch.Tensor) -> list[str]:
    """The aten ops that ``fn()`` runs which turn a tensor of ``x``'s size in another layout (channels
    last) into a new row-major (NCHW) one: each is a layout change, a copy the next NHWC conv undoes."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    seen = []

    def full(t: object) -> bool:
        return isinstance(t, torch.Tensor) and t.numel() == x.numel()

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
            other_layout = any(full(a) and not a.is_contiguous() and 0 not in a.stride() for a in inputs)
            storages = {a.untyped_storage().data_ptr() for a in inputs}
            if other_layout and any(full(o) and o.is_contiguous() and o.untyped_storage().data_ptr() not in storages
                                    for o in tree_leaves(out)):
                seen.append(str(func))
            return out

    with Watch():
        fn()
    return seen


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) as channels_last; (B, C, L) with channel stride 1, as attention's norm gets it."""
    if x.dim() == 4:
        return x.to(memory_format=torch.channels_last)
    return x.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize("shape, groups", [((2, 64, 8, 8), 32), ((3, 96, 5, 7), 8), ((2, 64, 16), 32)])
def test_channels_last_group_norm_is_the_stock_one_without_layout_copies(shape, groups):
    torch.manual_seed(0)
    stock = torch.nn.GroupNorm(groups, shape[1])
    torch.nn.init.normal_(stock.weight), torch.nn.init.normal_(stock.bias)
    x = torch.randn(shape) * 3 + 1
    xs, xc = x.clone().requires_grad_(True), _channels_last(x).requires_grad_(True)

    def norm(t: torch.Tensor) -> torch.Tensor:
        return channels_last_group_norm(t, groups, stock.weight, stock.bias, stock.eps)

    ys = stock(xs)
    yc = norm(xc)
    torch.testing.assert_close(yc, ys, rtol=0, atol=1e-5)
    assert yc.stride() == xc.stride() and yc.dtype == x.dtype  # the input's layout and dtype
    go = torch.randn_like(ys)
    w_grad = torch.autograd.grad(ys, stock.weight, go, retain_graph=True)[0]
    ys.backward(go), yc.backward(go)
    torch.testing.assert_close(xc.grad, xs.grad, rtol=0, atol=1e-5)  # the guided step's input gradient
    torch.testing.assert_close(stock.weight.grad, 2 * w_grad, rtol=1e-5, atol=1e-4)  # both paths' share equal
    assert layout_copies(lambda: torch.autograd.grad(norm(xc).square().sum(), xc), xc) == []
    with torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast fp32 out, as autocast's group_norm
        assert norm(xc.detach().bfloat16()).dtype == torch.float32
    # the module: the stock kernel for row-major inputs and in eager CPU runs (it keeps the layout there)
    module = ChannelsLastGroupNorm(groups, shape[1])
    module.load_state_dict(stock.state_dict())
    assert torch.equal(module(x), stock(x)) and torch.equal(module(xc), stock(xc))


def test_channels_last_swaps_the_unet_norms_and_back(tiny_unet):
    n = sum(type(m) is torch.nn.GroupNorm for m in tiny_unet.modules())
    state = {k: v.clone() for k, v in tiny_unet.state_dict().items()}
    fast_model(tiny_unet, channels_last=True)
    assert n > 0 and sum(type(m) is ChannelsLastGroupNorm for m in tiny_unet.modules()) == n
    assert tiny_unet.state_dict().keys() == state.keys()
    assert layout_group_norms(tiny_unet, keep_layout=False) == n
    assert sum(type(m) is torch.nn.GroupNorm for m in tiny_unet.modules()) == n
    fast_model(tiny_unet, channels_last=True, layout_norms=False)  # the stock norms, for comparison
    assert not any(type(m) is ChannelsLastGroupNorm for m in tiny_unet.modules())


@pytest.mark.slow
def test_compiled_fast_model_differentiates_the_input_only_without_layout_copies():
    """What runs on the GPU is inductor's code. A conv -> GroupNorm -> SiLU -> conv block through
    ``fast_model(channels_last=True, compile="default")`` and its input gradient, compiled: the
    convolution backwards compute the input gradient only (parameters frozen: a compiled backward
    would also compute every weight gradient), and no row-major activation is allocated (the stock
    norm's decomposition allocates one per norm)."""
    import re

    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.GroupNorm(32, 64),
                                torch.nn.SiLU(), torch.nn.Conv2d(64, 64, 3, padding=1))
    x = torch.randn(2, 64, 8, 8).to(memory_format=torch.channels_last).requires_grad_(True)
    ref = block(x)
    ref_grad = torch.autograd.grad(ref.square().sum(), x)[0]
    compiled = fast_model(block, channels_last=True, compile="default")
    assert not any(p.requires_grad for p in block.parameters())
    assert isinstance(block[1], ChannelsLastGroupNorm)

    def step():
        y = compiled(x)
        return y, torch.autograd.grad(y.square().sum(), x)[0]

    (y, grad), code = run_and_get_code(step)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-3)
    code = "\n".join(code)
    masks = re.findall(r"convolution_backward\.default\(.*(\[(?:True|False), (?:True|False), (?:True|False)\])\)", code)
    assert masks and set(masks) == {"[True, False, False]"}, masks  # grad_input, not grad_weight / grad_bias
    assert "(2, 64, 8, 8), (4096, 1, 512, 64)" in code  # channels-last activations are allocated ...
    assert "(2, 64, 8, 8), (4096, 64, 8, 1)" not in code  # ... and no row-major one


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
    from sda.method.projector import projection_batch_size

    assert auto_batch_size(lambda b: None, "cpu", cpu_default=16) == 16
    assert projection_batch_size(tiny_unet, scheduler, Projection(**{**PROJ, "batch_size": "auto"}), 16, 3) == 32
    assert projection_batch_size(tiny_unet, scheduler, Projection(**PROJ), 16, 3) == 4


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
