"""CUDA tests (``pytest -m gpu``; ``bench/gpu.sh`` runs them on a GPU machine). Each is skipped only
when ``torch.cuda.is_available()`` is false."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.support import IMAGENET_TINY, STAGES, copy_repo, make_imagenet_assets, subprocess_env
from sda.config import Projection

# before cuBLAS starts (collection time): what set_deterministic sets in a stage before CUDA starts
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is false)")]

PROJ = {"respacing": 10, "N": 3, "D": 4, "scale": 6.0, "per_sample_norm": False, "fix_off_by_one": False,
        "batch_size": 8, "precision": "fp32", "channels_last": False, "compile": "none"}
# the stages that run a model in each profile: on CUDA they must have allocated GPU memory
GPU_STAGES = {
    "embedded": {"source_model", "diffusion_finetune", "synth_generate", "synth_align", "classifier_align",
                 "target_project", "evaluate"},
    "imagenet": {"synth_generate", "synth_align", "classifier_align", "target_project", "evaluate"},
}
FAST = {"precision": "bf16", "channels_last": True}


@pytest.fixture
def cuda_unet(tiny_unet):
    return tiny_unet.cuda()


def _images(n: int = 8, size: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _project(unet, scheduler, images, **cfg):
    from sda.method.projector import project_uint8

    g = torch.Generator(device="cuda").manual_seed(0)
    return project_uint8(unet, scheduler, images, Projection(**{**PROJ, **cfg}), null_label=3, generator=g)


@pytest.mark.parametrize("profile", ["imagenet", "embedded"])
def test_every_stage_runs_on_cuda(tmp_path, profile):
    """The whole pipeline (each stage as ``python -m tasks.<stage>``, in order) with
    ``runtime.device: cuda``, bf16 + channels_last projection and bf16 generation: the ImageNet profile
    on a tiny generated ImageNet-like set, and the embedded profile with tiny params. Each stage logs
    device=cuda and its images/s; the stages that run a model allocated GPU memory; the table is written."""
    root = tmp_path / "repo"
    root.mkdir()
    overrides: dict = {"runtime": {"device": "cuda", "threads": 2}, "projection": FAST,
                       "synth_generate": {"precision": "bf16"}}
    if profile == "imagenet":
        tiny = {**IMAGENET_TINY, "projection": {**IMAGENET_TINY["projection"], **FAST},
                "synth_generate": {**IMAGENET_TINY["synth_generate"], "precision": "bf16"}}
        overrides.update({"profile": "imagenet", "imagenet": make_imagenet_assets(root),
                          "profiles": {"imagenet": tiny}})
    copy_repo(root, overrides, git=False)
    env = {**subprocess_env(), "SDA_LOG_LEVEL": "INFO"}
    for stage in STAGES:
        r = subprocess.run([sys.executable, "-m", f"tasks.{stage}"], cwd=root, env=env, capture_output=True,
                           text=True, timeout=400)
        assert r.returncode == 0, f"{stage} failed:\n{r.stderr[-3000:]}"
        assert f"stage {stage}: device=cuda" in r.stderr, r.stderr[-2000:]
        done = re.search(rf"stage {stage} done in .*peak GPU memory ([0-9.]+) GiB", r.stderr)
        assert done, f"{stage}: no closing line with the peak GPU memory:\n{r.stderr[-2000:]}"
        if stage in GPU_STAGES[profile]:
            assert float(done.group(1)) > 0, f"{stage} ran with device=cuda but allocated no GPU memory"
            assert "img/s" in done.group(0), done.group(0)
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert {"clean", "gaussian_noise", "pixelate"} <= set(metrics["domains"])
    manifest = json.loads((root / "data" / "target_project" / "clean" / "manifest.json").read_text())
    assert manifest["meta"]["projection"]["precision"] == "bf16"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_projection_is_close_to_fp32(cuda_unet, scheduler, precision):
    imgs = _images()
    ref = _project(cuda_unet, scheduler, imgs).astype(int)
    fast = _project(cuda_unet, scheduler, imgs, precision=precision).astype(int)
    diff = np.abs(fast - ref)
    assert diff.mean() < 3.0 and np.percentile(diff, 99) < 24, (diff.mean(), diff.max())
    assert not np.array_equal(fast, ref)  # the autocast really ran


def test_channels_last_and_compile_match_eager(cuda_unet, scheduler):
    imgs = _images()
    ref = _project(cuda_unet, scheduler, imgs).astype(int)
    cl = _project(cuda_unet, scheduler, imgs, channels_last=True).astype(int)
    assert np.abs(cl - ref).max() <= 2
    compiled = _project(cuda_unet, scheduler, imgs, compile="default").astype(int)
    assert np.abs(compiled - ref).mean() < 1.0


@pytest.mark.parametrize("shape", [(4, 256, 32, 32), (4, 512, 256)])  # a ResNet block's norm, attention's
def test_channels_last_group_norm_keeps_the_layout_on_cuda(shape):
    """Under bf16 autocast, as in the fast mode: the stock norm's value, fp32 out, and no NCHW copy in
    the forward or the input-gradient backward."""
    from sda.accel import ChannelsLastGroupNorm
    from tests.unit.sda.test_accel import _channels_last, layout_copies

    torch.manual_seed(0)
    stock = torch.nn.GroupNorm(32, shape[1]).cuda()
    norm = ChannelsLastGroupNorm(32, shape[1]).cuda()
    norm.load_state_dict(stock.state_dict())
    x = _channels_last(torch.randn(shape, device="cuda").bfloat16()).requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref, out = stock(x), norm(x)
        assert out.dtype == ref.dtype == torch.float32 and out.stride() == x.stride()
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-3)
        assert layout_copies(lambda: torch.autograd.grad(norm(x).square().sum(), x), x) == []


@pytest.mark.parametrize("fast", [{}, {**FAST, "compile": "default"}], ids=["fp32", "bf16+cl+compile"])
def test_deterministic_projection_repeats_its_bytes_on_cuda(cuda_unet, scheduler, fast, restore_determinism):
    """runtime.deterministic: true (the default) promises the same bytes run to run, on the GPU too
    (the docs said this was unmeasured there): the same batch projected twice, byte-identical."""
    from sda.runtime import set_deterministic

    set_deterministic(True)
    first = _project(cuda_unet, scheduler, _images(), **fast)
    again = _project(cuda_unet, scheduler, _images(), **fast)
    assert np.array_equal(first, again), np.abs(first.astype(int) - again.astype(int)).max()


def test_cuda_graphs_match_eager(cuda_unet, scheduler):
    """compile: reduce-overhead (inductor + CUDA graphs, one graph per batch shape) through the guided
    step's input-gradient backward, twice with the same shape (the replay), then a new shape."""
    imgs = _images()
    ref = _project(cuda_unet, scheduler, imgs).astype(int)
    for _ in range(2):
        graphs = _project(cuda_unet, scheduler, imgs, compile="reduce-overhead").astype(int)
        assert np.abs(graphs - ref).mean() < 1.0
    assert _project(cuda_unet, scheduler, _images(4), compile="reduce-overhead", batch_size=4).shape == (4, 16, 16, 3)


def test_cuda_out_of_memory_names_the_batch_size(cuda_unet, scheduler):
    from sda.accel import name_oom

    _, total = torch.cuda.mem_get_info()
    with pytest.raises(ValueError, match=r"projection\.batch_size"):
        with name_oom("projection.batch_size", 10**6, "projecting"):
            torch.empty(int(total * 4), dtype=torch.uint8, device="cuda")  # more bytes than the card has
    # the same path through the projection: a batch too large for a 1 GiB share of the card
    torch.cuda.set_per_process_memory_fraction(2**30 / total)
    try:
        with pytest.raises(ValueError, match=r"lower projection\.batch_size"):
            _project(cuda_unet, scheduler, _images(50_000))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def test_auto_batch_size_fits_the_card(cuda_unet, scheduler):
    from sda.method.projector import projection_batch_size

    bs = projection_batch_size(cuda_unet, scheduler, Projection(**{**PROJ, "batch_size": "auto"}), 16, 3)
    assert bs >= 8 and bs & (bs - 1) == 0
    out = _project(cuda_unet, scheduler, _images(bs), batch_size=bs)
    assert out.shape == (bs, 16, 16, 3)


def test_shard_jobs_on_a_local_cuda_cluster(tmp_path, cuda_unet, scheduler):
    """workers >= 1 on a CUDA machine: dask-cuda's LocalCUDACluster (one worker per GPU) projects
    the shards; the keys are those of the in-process run and the pixels agree."""
    from dask_cuda import LocalCUDACluster  # noqa: F401 - dask-cuda must be installed on GPU machines

    from sda.models.diffusion import DiffusionInfo, save_diffusion
    from sda.method.projector import project_job, projection_jobs
    from sda.io.resumable_jobs import run_shard_jobs
    from sda.io.shards import Sample, load_shards, write_shards

    model_dir = tmp_path / "model"
    save_diffusion(model_dir, cuda_unet.cpu(), scheduler, DiffusionInfo(null_label=3, num_classes=3))
    src = tmp_path / "src"
    src.mkdir()
    imgs = _images(24)
    write_shards((Sample(key=f"k{i:03d}", image=im, label=i % 3) for i, im in enumerate(imgs)), src, maxcount=8)
    jobs = projection_jobs(src, [""])
    make = dict(model_dir=str(model_dir), src_root=str(src), projection=Projection(**PROJ), seed=0, device="cuda")

    runs = {}
    for workers in (0, 1):
        out = tmp_path / f"out{workers}"
        run_shard_jobs(out, jobs, functools.partial(project_job, **make), plan={"w": 0}, workers=workers)
        runs[workers] = load_shards(out)
    assert runs[0].keys == runs[1].keys == [f"k{i:03d}" for i in range(24)]
    assert np.abs(runs[0].images.astype(int) - runs[1].images.astype(int)).max() <= 1


def test_prefetch_overlaps_and_keeps_order():
    from sda.accel import prefetch

    items = [torch.full((4, 3), i, dtype=torch.uint8) for i in range(5)]
    got = list(prefetch(items, lambda t: t, "cuda"))
    assert [int(x[0, 0]) for _, x in got] == list(range(5))
    assert all(x.is_cuda for _, x in got)
