"""The synthetic domain's plan and generation (sda.method.synth). Its shards written by jobs, in one process or on
dask workers, are tested in tests/unit/sda/io/test_resumable_jobs.py."""

import numpy as np
import pyarrow.parquet as pq

from sda.io.resumable_jobs import ShardJob
from sda.method.synth import generate_job, plan_row, sample_plan, write_plan
from sda.models.diffusion import DiffusionInfo, save_diffusion
from sda.runtime import derive_seed


def test_a_plan_row_is_a_function_of_its_index_the_classes_and_the_seed():
    row = plan_row(4, [3, 5, 7], seed=9)
    assert row == {"index": 4, "key": "synth-0000004", "class": 5, "seed": derive_seed(9, "synth", 4)}
    assert plan_row(4, [0, 1], seed=9)["seed"] == row["seed"]  # the noise of row i is the same for any classes


def test_the_plan_is_written_as_a_typed_table_whose_every_prefix_is_class_balanced(tmp_path):
    plan = sample_plan([3, 5, 7], per_class=2, seed=1)
    assert [str(t) for t in plan.schema.types] == ["int64", "string", "int64", "int64"]
    assert plan.column("class").to_pylist() == [3, 5, 7, 3, 5, 7]
    write_plan(plan, tmp_path / "plan.parquet")
    assert pq.read_table(tmp_path / "plan.parquet").equals(plan)


def test_a_generated_sample_depends_on_its_plan_row_alone(tiny_unet, scheduler, tmp_path):
    model_dir = tmp_path / "diffusion"
    save_diffusion(model_dir, tiny_unet, scheduler, DiffusionInfo(num_classes=3, null_label=3, classes=[0, 2]))

    def generate(start, stop, batch_size):
        return list(generate_job(ShardJob("s.tar", start, stop), model_dir=str(model_dir), seed=7, steps=2,
                                 guidance_scale=1.0, batch_size=batch_size))

    whole, tail = generate(0, 4, 4), generate(2, 4, 1)
    assert [(s.key, s.label, s.meta) for s in whole] == [
        (r["key"], r["class"], {"seed": r["seed"], "index": r["index"]}) for r in (plan_row(i, [0, 2], 7) for i in range(4))]
    assert whole[0].image.shape == (16, 16, 3) and whole[0].image.dtype == np.uint8
    for a, b in zip(whole[2:], tail):  # the same rows in another job and batch
        assert a.key == b.key and np.abs(a.image.astype(int) - b.image).max() <= 1
    assert np.abs(whole[0].image.astype(int) - whole[2].image).mean() > 5  # another seed, another image
