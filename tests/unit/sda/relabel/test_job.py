"""sda.relabel.job on a real inbox, label store and tiny random models: each image labelled exactly once
(with the lineage of its models), every bad file quarantined with its reason, one run at a time per store,
and a committed batch that lost its report given one by the next run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from sda.config import Projection, parse_params
from sda.relabel.job import Lineage, RelabelJob, batch_id_of
from sda.relabel.store import read_table
from tests.support.images import random_png
from tests.support.relabel_models import CLASS_NAMES, make_relabel_models

LINEAGE = Lineage("src-md5", "aligned-md5", "diff-md5", "params-sha", "c0ffee")
PROJECTION = Projection(respacing=4, N=2, D=2, scale=1.0, batch_size=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    return make_relabel_models(tmp_path_factory.mktemp("models"))


def _job(tmp_path: Path, models: dict, run_id: str = "run-1", **relabel) -> RelabelJob:
    settings = parse_params({"relabel": {"inbox": str(tmp_path / "inbox"), "labels": str(tmp_path / "labels"),
                                         "quarantine": str(tmp_path / "quarantine"), "min_age_seconds": 0,
                                         "upload_grace_seconds": 0, "monitor": {"enabled": False}, **relabel}}).relabel
    return RelabelJob(settings, projection=PROJECTION, image_size=16, models=models, lineage=LINEAGE, seed=0,
                      run_id=run_id)


@pytest.fixture
def inbox(tmp_path) -> Path:
    """Two distinct images, a copy of the first, a file that is not an image, a link out of the inbox."""
    root = tmp_path / "inbox"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(random_png(1))
    (root / "sub" / "b.png").write_bytes(random_png(2))
    (root / "sub" / "copy-of-a.png").write_bytes(random_png(1))
    (root / "notes.png").write_bytes(b"not an image at all")
    (tmp_path / "secret.png").write_bytes(random_png(3))
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    return root


def test_a_batch_id_is_fixed_by_the_batchs_content_in_order():
    items = [SimpleNamespace(sha256=c * 64) for c in "abc"]
    bid = batch_id_of(items)
    assert len(bid) == 16 and int(bid, 16) >= 0
    assert batch_id_of([SimpleNamespace(sha256=c * 64) for c in "abc"]) == bid
    assert batch_id_of(items[::-1]) != bid and batch_id_of(items[:2]) != bid


def test_each_image_is_labelled_once_and_each_bad_file_quarantined_with_its_reason(tmp_path, models, inbox):
    with _job(tmp_path, models) as job:
        assert [len(b) for b in job.batches] == [3]  # the copy is one image
        (report,) = [job.process(b) for b in job.batches]
    assert report.labelled == 2 and report.quarantined == 1 and sum(report.label_counts.values()) == 2
    labels = read_table(tmp_path / "labels").to_pylist()
    assert sorted(r["source_path"] for r in labels) in (["a.png", "sub/b.png"], ["sub/b.png", "sub/copy-of-a.png"])
    for r in labels:
        assert r["class_name"] == CLASS_NAMES[r["label"]] and r["top5"][0] == r["label"] and r["run_id"] == "run-1"
        assert (r["source_model_hash"], r["params_hash"], r["code_version"]) == ("src-md5", "params-sha", "c0ffee")
        assert (r["width"], r["height"], r["mode"], r["batch_id"]) == (20, 20, "RGB", report.batch_id)
    quarantined = {r["file"]: r for r in read_table(tmp_path / "quarantine" / "table").to_pylist()}
    assert set(quarantined) == {"notes.png", "link.png"}
    assert quarantined["notes.png"]["reason"].startswith("not an image")
    assert quarantined["link.png"]["reason"].startswith("symlink, not followed")
    assert quarantined["link.png"]["quarantined_as"] == ""  # a link: a row, no copy
    copy = tmp_path / "quarantine" / "files" / quarantined["notes.png"]["quarantined_as"]
    assert copy.read_bytes() == b"not an image at all"
    assert sorted(p.name for p in inbox.rglob("*")) == ["a.png", "b.png", "copy-of-a.png", "sub"]  # bad ones moved
    assert (tmp_path / "secret.png").read_bytes() == random_png(3)  # the link's target untouched
    assert list((tmp_path / "labels" / "_reports").glob(f"*/{report.batch_id}.md"))


def test_the_next_runs_label_only_what_is_new_and_load_no_model_when_nothing_is(tmp_path, models, inbox):
    with _job(tmp_path, models) as job:
        for b in job.batches:
            job.process(b)
    (inbox / "c.png").write_bytes(random_png(4))
    with _job(tmp_path, models, run_id="run-2") as job:
        assert [[it.source for it in b] for b in job.batches] == [["c.png"]]
        assert len(job.scan.known) == 3  # a, b and the copy of a: done, not read again
        for b in job.batches:
            job.process(b)
    with _job(tmp_path, models, run_id="run-3") as job:
        assert job.batches == [] and job.predictor is None
    rows = read_table(tmp_path / "labels").to_pylist()
    assert len(rows) == 3 and len({r["sha256"] for r in rows}) == 3
    assert [r["run_id"] for r in rows if r["source_path"] == "c.png"] == ["run-2"]


def test_a_second_run_on_the_same_store_waits_for_the_first_then_gives_up(tmp_path, models):
    (tmp_path / "inbox").mkdir()
    with _job(tmp_path, models):
        with pytest.raises(RuntimeError, match=r"another relabel run holds .*\.relabel\.lock for more than "
                                               r"relabel.lock_timeout_seconds=0"):
            _job(tmp_path, models, lock_timeout_seconds=0).__enter__()
    with _job(tmp_path, models, lock_timeout_seconds=0) as job:  # released: it runs
        assert job.batches == []


def test_a_killed_writers_temporaries_are_removed_when_a_run_starts(tmp_path, models):
    (tmp_path / "inbox").mkdir()
    (tmp_path / "labels" / "_reports" / "2024-01-01").mkdir(parents=True)
    stale = [tmp_path / "labels" / "_reports" / "2024-01-01" / ".x.md.tmp-dead",
             tmp_path / "labels" / ".scan-index.json.tmp-dead"]
    for p in stale:
        p.write_bytes(b"half")
    with _job(tmp_path, models):
        pass
    assert not any(p.exists() for p in stale)


def test_a_file_too_large_is_quarantined_unread_and_left_in_the_inbox(tmp_path, models):
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "big.png").write_bytes(random_png(5, size=64))
    with _job(tmp_path, models, max_file_bytes=1000) as job:
        assert job.batches == []
    (row,) = read_table(tmp_path / "quarantine" / "table").to_pylist()
    assert row["file"] == "big.png" and "too large" in row["reason"] and row["quarantined_as"] == ""
    assert (tmp_path / "inbox" / "big.png").exists()  # not read, so not removed


def test_a_committed_batch_without_its_report_gets_one_from_the_store_on_the_next_run(tmp_path, models, inbox):
    with _job(tmp_path, models) as job:
        report = job.process(job.batches[0])
    (written,) = (tmp_path / "labels" / "_reports").glob(f"*/{report.batch_id}.md")
    written.unlink()  # the run stopped between the label commit and the report
    with _job(tmp_path, models, run_id="run-2"):
        pass
    (healed,) = (tmp_path / "labels" / "_reports").glob(f"*/{report.batch_id}.md")
    assert report.batch_id in healed.read_text()


def test_the_scan_index_is_kept_for_this_inbox_and_another_inboxs_is_ignored(tmp_path, models, inbox):
    index = tmp_path / "labels" / ".scan-index.json"
    with _job(tmp_path, models) as job:
        for b in job.batches:
            job.process(b)
    saved = json.loads(index.read_text())
    assert saved["inbox"] == str(inbox.resolve()) and "a.png" in saved["entries"]
    os.rename(inbox, tmp_path / "other")
    (tmp_path / "inbox").mkdir()
    with _job(tmp_path, models, run_id="run-2") as job:
        assert job._read_index() == {}  # the index is of another inbox now
