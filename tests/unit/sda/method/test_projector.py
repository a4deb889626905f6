"""Projecting shard sets (sda.method.projector): one job per input shard, keys kept, each batch's noise from its
seed. The distilled projector's checks are in test_distill.py, the automatic batch size in test_accel.py."""

import numpy as np
import torch

from sda.config import Projection
from sda.io.shards import Sample, read_manifest, write_shards
from sda.method.projector import Projector, project_job, project_uint8, projection_jobs
from sda.models.diffusion import DiffusionInfo, save_diffusion
from sda.runtime import derive_seed
from tests.support.methods import images as _images

PROJECTION = Projection(respacing=10, N=1, D=4, scale=6.0, batch_size=2)


def _shards(path, n, maxcount):
    path.mkdir(parents=True)
    write_shards([Sample(key=f"{path.name}-{i}", image=im, label=i % 3, meta={"i": i})
                  for i, im in enumerate(_images(n))], path, maxcount=maxcount)
    return path


def test_the_jobs_number_the_images_across_the_shard_sets_in_order(tmp_path):
    _shards(tmp_path / "a", 5, maxcount=2)
    _shards(tmp_path / "b", 2, maxcount=2)
    jobs = projection_jobs(tmp_path, ["a", "b"])
    assert [(j.name, j.start, j.stop) for j in jobs] == [
        ("a/shard-000000.tar", 0, 2), ("a/shard-000001.tar", 2, 4), ("a/shard-000002.tar", 4, 5),
        ("b/shard-000000.tar", 5, 7)]
    assert jobs[3].extra == (("sha256", read_manifest(tmp_path / "b")["shards"][0]["sha256"]),)
    assert [j.name for j in projection_jobs(tmp_path / "a", [""])][0] == "shard-000000.tar"


def test_with_a_generator_per_image_an_images_projection_is_its_own(tiny_unet, scheduler):
    x = _images(3)
    per_image = PROJECTION.model_copy(update={"per_sample_norm": True})

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    out = project_uint8(tiny_unet, scheduler, x, per_image, null_label=3, generator=gens([1, 2, 3]))
    alone = project_uint8(tiny_unet, scheduler, x[1:2], per_image, null_label=3, generator=gens([2]))
    assert out.dtype == np.uint8 and out.shape == x.shape
    assert np.abs(out[1].astype(int) - alone[0]).max() <= 1 and np.abs(out.astype(int) - x).mean() > 5


def test_a_projection_job_keeps_the_records_and_draws_each_batchs_noise_from_its_seed(tiny_unet, scheduler, tmp_path):
    model_dir = tmp_path / "diffusion"
    save_diffusion(model_dir, tiny_unet, scheduler, DiffusionInfo(num_classes=3, null_label=3))
    src = _shards(tmp_path / "src", 4, maxcount=4)
    (job,) = projection_jobs(src, [""])
    run = project_job(job, model_dir=str(model_dir), src_root=str(src), projection=PROJECTION, seed=3)
    out = []
    try:
        while True:
            out.append(next(run))
    except StopIteration as done:
        cost = done.value
    assert [(s.key, s.label, s.meta) for s in out] == [(f"src-{i}", i % 3, {"i": i}) for i in range(4)]
    assert cost == {"images": 4, "forwards": 4, "backwards": 4}  # N guided steps an image
    second_batch = Projector(model_dir, PROJECTION)(_images(4)[2:4], derive_seed(3, job.name, 1))
    assert np.array_equal(np.stack([s.image for s in out[2:4]]), second_batch)
