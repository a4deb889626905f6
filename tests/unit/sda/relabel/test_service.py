"""sda.relabel.service: a relabel job built for a checkout from what its pipeline produced (the models, the
stored image size), refused before the pipeline has run, and a run's summary of what happened to each file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sda.config import parse_params
from sda.io.shards import Sample, write_shards
from sda.io.target_index import TargetIndex
from sda.layout import MODELS, OUTS
from sda.relabel.job import Lineage
from sda.relabel.service import ModelsMissing, make_job, run_job, stored_image_size

LINEAGE = Lineage("s", "a", "d", "p", "c")


def _targets(root: Path, side: int = 24) -> None:
    """target_data's out as the pipeline writes it: the index and a shard set per domain."""
    out = root / OUTS["target_data"]
    for d in ("clean", "fog"):
        (out / d).mkdir(parents=True)
        write_shards([Sample(key=f"{d}{i}", image=np.zeros((side, side, 3), np.uint8), label=0) for i in range(2)],
                     out / d, prefix=d)
    TargetIndex(domains=("clean", "fog"), corruptions=("fog",), in_mean=("fog",), split="test").write(out)


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A checkout whose pipeline ran: model folders (empty: a job loads them only when it labels), targets."""
    for role, rel in MODELS.items():
        if role == "classes":
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text('{"names": ["x", "y"]}')
        elif role != "projector":
            (tmp_path / rel).mkdir(parents=True, exist_ok=True)
    _targets(tmp_path)
    (tmp_path / "data" / "inbox").mkdir(parents=True)
    return tmp_path


def test_the_image_size_is_the_stored_targets_not_todays_params(tmp_path):
    with pytest.raises(ModelsMissing, match=r"domains.json is missing: run the pipeline first"):
        stored_image_size(tmp_path)
    _targets(tmp_path, side=24)
    assert stored_image_size(tmp_path) == 24


@pytest.mark.parametrize("role", ["source", "aligned", "diffusion", "classes"])
def test_a_job_before_the_pipeline_has_made_a_model_names_it(checkout, role):
    path = checkout / MODELS[role]
    if path.is_dir():
        path.rename(path.with_name("moved"))
    else:
        path.unlink()
    with pytest.raises(ModelsMissing, match=f"{path} is missing \\({role} model\\): run the pipeline first"):
        make_job(checkout, parse_params({}), LINEAGE)


def test_a_distilled_projection_needs_the_projector_too(checkout):
    with pytest.raises(ModelsMissing, match=r"projector is missing \(projector model\)"):
        make_job(checkout, parse_params({"projection": {"method": "distilled", "batch_size": 8}}), LINEAGE)


def test_the_jobs_paths_are_the_checkouts_and_overrides_replace_settings(checkout, tmp_path_factory):
    params = parse_params({"runtime": {"seed": 5, "device": "cpu"}})
    job = make_job(checkout, params, LINEAGE, overrides={"batch_size": 7})
    assert job.inbox == checkout / "data" / "inbox" and job.labels_dir == checkout / "data" / "labels"
    assert job.quarantine_dir == checkout / "data" / "quarantine" and job.settings.batch_size == 7
    assert job.image_size == 24 and job.seed == 5 and job.lineage == LINEAGE and str(job.device) == "cpu"
    assert job.models == {role: checkout / rel for role, rel in MODELS.items() if role != "projector"}
    assert job.reference_dir == checkout / OUTS["target_data"] and job.guard is None
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    other = make_job(checkout, params, LINEAGE, inbox=str(elsewhere), flow_run_id="flow-1")
    assert other.inbox == elsewhere and other.flow_run_id == "flow-1" and other.run_id != job.run_id


def test_a_run_of_refused_files_only_quarantines_them_and_counts_each_kind(checkout):
    inbox = checkout / "data" / "inbox"
    (checkout / "outside.png").write_bytes(b"x")
    (inbox / "link.png").symlink_to(checkout / "outside.png")
    (inbox / "big.png").write_bytes(b"\0" * 2000)
    (inbox / ".part.png").write_bytes(b"uploading")
    (inbox / "notes.txt").write_text("not an image")
    job = make_job(checkout, parse_params({"runtime": {"device": "cpu"}}), LINEAGE,
                   overrides={"max_file_bytes": 1000, "min_age_seconds": 0})
    summary = run_job(job, lambda job, batch, i: pytest.fail("no batch to process"))
    assert {k: summary[k] for k in ("labelled", "quarantined", "batches", "symlinks", "already_done", "deferred")} == {
        "labelled": 0, "quarantined": 2, "batches": 0, "symlinks": 1, "already_done": 0, "deferred": 0}
    assert summary["monitor"] is None and summary["images_per_second"] == 0.0 and summary["adapted"] == 0
    assert summary["labels"] == str(checkout / "data" / "labels") and summary["run_id"] == job.run_id
    again = run_job(make_job(checkout, parse_params({"runtime": {"device": "cpu"}}), LINEAGE,
                             overrides={"max_file_bytes": 1000, "min_age_seconds": 0}), lambda *a: None)
    assert again["quarantined"] == 0 and again["already_done"] == 1  # the big file, refused before: known now
