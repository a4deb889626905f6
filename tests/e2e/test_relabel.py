"""Relabelling new target images with the models of a real (tiny) pipeline run: the CLI, exactly-once
under kill -9 and concurrent runs, bad inputs, and the Prefect deployments on a real local server."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.support import free_port, sh, subprocess_env
from tests.support.torch_state import torch_state_kept
from sda.io.atomic import sha256_file
from sda.io.shards import iter_samples
from sda.relabel.store import committed_hashes, part_files, read_table
from tests.support.images import huge_header_png, png_bytes

pytestmark = pytest.mark.slow


def _target_images(repo: Path, n: int, domain: str = "clean") -> list[tuple[np.ndarray, int]]:
    out = []
    for s in iter_samples(repo / "data" / "target_data" / domain):
        out.append((s.image, s.label))
        if len(out) == n:
            break
    return out


def _good_inbox(repo: Path, inbox: Path, n: int, domain: str = "clean", old: bool = True) -> dict[str, int]:
    """``n`` PNGs of target images in nested folders; returns {relative path: true label}."""
    truth = {}
    for i, (img, label) in enumerate(_target_images(repo, n, domain)):
        rel = f"cam {i % 3}/img-{i:03d}.png"
        (inbox / rel).parent.mkdir(parents=True, exist_ok=True)
        (inbox / rel).write_bytes(png_bytes(img))
        truth[rel] = label
    return truth


def relabel_cli(repo: Path, inbox: Path, store: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(repo, sys.executable, "-m", "flows.relabel", "--inbox", str(inbox), "--labels", str(store / "labels"),
              "--quarantine", str(store / "quarantine"), *extra, check=check)


def relabel_main(repo: Path, *argv: str) -> subprocess.CompletedProcess:
    """``python -m flows.relabel --root repo *argv``'s code (its ``main``) in this process: the same
    parsing, job, output and exit status without a new interpreter (~9 s of imports a run); what the
    CLI sets in torch (threads, deterministic algorithms) is put back after it."""
    from flows.relabel import main

    out, err = io.StringIO(), io.StringIO()
    args = ["--root", str(repo), *argv] if argv[:1] != ("status",) else ["status", "--root", str(repo), *argv[1:]]
    with torch_state_kept(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return subprocess.CompletedProcess(["flows.relabel.main", *args], code, out.getvalue(), err.getvalue())


def relabel_here(repo: Path, inbox: Path, store: Path, *extra: str) -> subprocess.CompletedProcess:
    """:func:`relabel_cli` in this process (:func:`relabel_main`); exit status 0 asserted."""
    r = relabel_main(repo, "--inbox", str(inbox), "--labels", str(store / "labels"),
                     "--quarantine", str(store / "quarantine"), *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _pump_lines(proc: subprocess.Popen, until: str, timeout: float) -> list[str]:
    """Read ``proc``'s stdout in a thread (for as long as it runs, so a full pipe never blocks it);
    return the lines so far once one starts with ``until``, the process ends, or ``timeout`` passes."""
    lines: list[str] = []
    seen = threading.Event()

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(until):
                seen.set()
        seen.set()  # end of output: the process is gone

    threading.Thread(target=pump, daemon=True).start()
    seen.wait(timeout)
    return list(lines)


def _summary(r: subprocess.CompletedProcess) -> dict:
    return json.loads(r.stdout[r.stdout.index("{"):])


def test_cli_labels_each_image_once_and_quarantines_bad_files(tiny_repo, tmp_path):
    inbox, store = tmp_path / "inbox", tmp_path / "store"
    inbox.mkdir()
    truth = _good_inbox(tiny_repo, inbox, 24)
    imgs = _target_images(tiny_repo, 40)[24:]
    # odd but valid: converted, not quarantined
    grey = Image.fromarray(imgs[0][0]).convert("L")
    odd = {
        "odd/grey ü名.png": grey,
        "odd/cmyk..x.jpg": Image.fromarray(imgs[1][0]).convert("CMYK"),
        "odd/rgba.png": Image.fromarray(np.dstack([imgs[2][0], np.full((16, 16), 200, np.uint8)]), "RGBA"),
        "odd/sixteen.png": Image.fromarray(np.asarray(grey).astype(np.uint16) * 257),
        "odd/big.webp": Image.fromarray(imgs[3][0]).resize((64, 64)),
    }
    for rel, img in odd.items():
        (inbox / rel).parent.mkdir(exist_ok=True)
        img.save(inbox / rel, format={"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[rel.rsplit(".", 1)[1]])
    with tarfile.open(inbox / "shard-000.tar", "w") as tar:  # a WebDataset shard: key.png + key.cls
        for i, (img, label) in enumerate(imgs[5:9]):
            for name, data in ((f"k{i}.png", png_bytes(img)), (f"k{i}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    bad = {
        "bad/empty.png": b"",
        "bad/truncated.png": png_bytes(imgs[10][0])[:-30],
        "bad/text.jpg": b"definitely not a jpeg\n",
        "bad/bomb.png": huge_header_png(),
        "bad/new\nline ..png": b"\x89PNG\r\n\x1a\nnope",
    }
    for rel, data in bad.items():
        (inbox / rel).parent.mkdir(exist_ok=True)
        (inbox / rel).write_bytes(data)
    (inbox / "README.txt").write_text("ignored")
    outside = tmp_path / "outside.png"  # people `ln -s` images into folders: reported, never read
    outside.write_bytes(png_bytes(imgs[11][0]))
    (inbox / "linked.png").symlink_to(outside)

    r = relabel_cli(tiny_repo, inbox, store)
    s = _summary(r)
    assert s["labelled"] == 24 + 5 + 4 and s["quarantined"] == 5 + 1 and s["ignored"] == 1 and s["symlinks"] == 1

    rows = read_table(store / "labels").to_pylist()
    assert len(rows) == 33 and len({r["sha256"] for r in rows}) == 33
    by_path = {r["source_path"]: r for r in rows}
    assert set(by_path) == set(truth) | set(odd) | {f"shard-000.tar::k{i}.png" for i in range(4)}
    assert by_path["odd/sixteen.png"]["mode"].startswith("I") and by_path["odd/cmyk..x.jpg"]["mode"] == "CMYK"
    assert by_path["odd/big.webp"]["width"] == 64
    lock = yaml.safe_load((tiny_repo / "dvc.lock").read_text())["stages"]
    # the lineage is what the run that built the models recorded, not today's params or checkout
    protocol = json.loads((tiny_repo / "metrics" / "evaluate.json").read_text())["protocol"]
    for r in rows:
        assert 0 <= r["label"] < 10 and r["class_name"] == str(r["label"]) and len(r["top5"]) == 5
        assert r["top5"][0] == r["label"] and 0 < r["confidence"] <= 1 and r["key"] == r["sha256"][:16]
        assert r["source_model_hash"] == lock["source_model"]["outs"][0]["md5"]
        assert r["aligned_model_hash"] == lock["classifier_align"]["outs"][0]["md5"]
        assert r["diffusion_model_hash"] == lock["diffusion_finetune"]["outs"][0]["md5"]
        assert r["flow_run_id"] is None and re.fullmatch(r"[0-9a-f]{40}(-dirty)?", r["code_version"])
        assert r["params_hash"] == protocol["params_sha256"][:16] and r["code_version"] == protocol["code_version"]
    # the images reach the models as the pipeline's evaluation sees them: the source model is right
    # on most clean images (a colour / layout / scaling mistake would make it chance-level)
    src_acc = np.mean([by_path[p]["source_label"] == y for p, y in truth.items()])
    assert src_acc > 0.7, src_acc

    q = read_table(store / "quarantine" / "table").to_pylist()
    reasons = {r["file"]: r["reason"] for r in q}
    assert set(reasons) == set(bad) | {"linked.png"}
    assert reasons["linked.png"].startswith("symlink, not followed")
    link_row = q.pop([r["file"] for r in q].index("linked.png"))
    assert link_row["quarantined_as"] == "" and link_row["size_bytes"] == 0  # no copy of the target
    assert not (inbox / "linked.png").is_symlink() and outside.is_file()  # the link left, its target kept
    assert reasons["bad/empty.png"].startswith("empty file")
    assert reasons["bad/truncated.png"].startswith("truncated or corrupt")
    assert reasons["bad/text.jpg"].startswith("not an image")
    assert reasons["bad/bomb.png"].startswith("too many pixels")
    for r in q:
        copy = store / "quarantine" / "files" / r["quarantined_as"]
        assert copy.is_file() and copy.parent == store / "quarantine" / "files"
        assert not (inbox / r["file"]).exists()  # moved out of the inbox
    reports = list((store / "labels" / "_reports").rglob("*.md"))
    assert reports and "Labels (SDA)" in reports[0].read_text()
    assert list((store / "labels" / "_reports").rglob("*.png"))

    # a second run finds nothing new, and removes what writers killed by -9 left (a report, a copy)
    report_temp = reports[0].with_name(f".{reports[0].name}.tmp-0123abcd")
    copy_temp = store / "quarantine" / "files" / ".x.png.tmp-0123abcd"
    report_temp.write_text("half a report"), copy_temp.write_bytes(b"half a copy")
    assert _summary(relabel_here(tiny_repo, inbox, store))["labelled"] == 0
    assert not report_temp.exists() and not copy_temp.exists()
    # a new file (and a renamed copy of an old one) -> one new row
    (inbox / "later.png").write_bytes(png_bytes(imgs[12][0]))
    (inbox / "renamed copy.png").write_bytes((inbox / "cam 0/img-000.png").read_bytes())
    s = _summary(relabel_here(tiny_repo, inbox, store))
    assert s["labelled"] == 1
    assert len(read_table(store / "labels")) == 34


def test_a_label_does_not_depend_on_the_other_files_of_the_run(tiny_repo, tmp_path):
    """Relabelling is a stream-independent map: an image labelled alone and among 31 others (a
    corrupted domain, where the projection decides) gets the same label, confidence and projection-based
    top-5, since each image is projected with its own guidance norm and its own noise."""
    images = [img for img, _ in _target_images(tiny_repo, 32, "gaussian_noise")]
    alone, crowd = tmp_path / "alone", tmp_path / "crowd"
    alone.mkdir()
    crowd.mkdir()
    (alone / "x.png").write_bytes(png_bytes(images[5]))
    for i, img in enumerate(images):
        (crowd / f"i{i:02d}.png").write_bytes(png_bytes(img))
    relabel_here(tiny_repo, alone, tmp_path / "s1", "--batch-size", "32")
    relabel_here(tiny_repo, crowd, tmp_path / "s2", "--batch-size", "32")
    (a,) = read_table(tmp_path / "s1" / "labels").to_pylist()
    rows = {r["sha256"]: r for r in read_table(tmp_path / "s2" / "labels").to_pylist()}
    assert len(rows) == 32
    c = rows[a["sha256"]]
    assert a["label"] == c["label"] and a["top5"] == c["top5"]
    assert a["confidence"] == pytest.approx(c["confidence"], abs=1e-5)


def test_the_monitor_flags_a_skewed_batch_not_an_evaluated_one_and_says_too_few(tiny_repo, tmp_path):
    """relabel.monitor: each run's summary carries the label-free estimates and drift tests against the
    pipeline's evaluated targets, each batch's row goes to <labels>/_monitor/, `status` prints the runs."""
    store = tmp_path / "s"
    pool = [(img, y) for d in ("clean", "gaussian_noise", "pixelate") for img, y in _target_images(tiny_repo, 180, d)]
    batches = {"evaluated": pool[::9][:60], "skewed": [p for p in pool if p[1] == 3], "few": pool[1:4]}  # 60, 54, 3
    monitors = {}
    for name, items in batches.items():
        inbox = tmp_path / name
        inbox.mkdir()
        for i, (img, _) in enumerate(items):
            (inbox / f"{name}-{i:03d}.png").write_bytes(png_bytes(img))
        monitors[name] = _summary(relabel_here(tiny_repo, inbox, store, "--batch-size", "64"))["monitor"]
    evaluated, skewed, few = monitors["evaluated"], monitors["skewed"], monitors["few"]
    assert evaluated["images"] == 60 and not evaluated["too_few"] and not evaluated["drift"], json.dumps(monitors)
    assert "inputs" in evaluated["tests"] and evaluated["fired"] == [], evaluated  # the input test ran, quiet
    assert skewed["drift"] and skewed["tests"]["labels"]["p"] < 1e-3, skewed
    assert few["too_few"] and not few["drift"] and few["tests"] == {}, few
    for m in monitors.values():
        assert 0 <= m["estimated_accuracy"] <= 100 and m["reference_accuracy"] > 0
    rows = read_table(store / "labels" / "_monitor").to_pylist()
    assert sorted((r["images"], r["drift"]) for r in rows) == [(3, False), (54, True), (60, False)]
    assert len(read_table(store / "labels")) == 117  # the monitor's rows are not label rows
    r = relabel_main(tiny_repo, "status", "--labels", str(store / "labels"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 4 and "est. acc %" in lines[0], r.stdout
    assert [line.split()[-2:] for line in lines[1:]] == [["0", "0"], ["1", "0"], ["0", "1"]], r.stdout


def test_a_first_run_reads_the_pipelines_monitor_reference_which_is_what_it_would_compute(tiny_repo, tmp_path,
                                                                                          caplog, monkeypatch):
    """The pipeline's monitor_reference stage made the monitor's references from the models relabelling
    loads (dvc.lock says so): a first run reads them instead of labelling 512 reference images before its
    first batch; where dvc.lock does not vouch for them the run computes its own, and gets the same."""
    import logging

    import flows.relabel

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _good_inbox(tiny_repo, inbox, 8)
    with caplog.at_level(logging.INFO, logger="sda.relabel"):
        relabel_here(tiny_repo, inbox, tmp_path / "read", "--batch-size", "8")
    said = [r.getMessage() for r in caplog.records if "reference" in r.getMessage()]
    assert len(said) == 2 and all("from the pipeline's" in m for m in said), said
    caplog.clear()
    monkeypatch.setattr(flows.relabel, "computed_reference", lambda root, lineage, stages: None)
    with caplog.at_level(logging.INFO, logger="sda.relabel"):
        relabel_here(tiny_repo, inbox, tmp_path / "computed", "--batch-size", "8")
    said = [r.getMessage() for r in caplog.records if "reference" in r.getMessage()]
    assert len(said) == 2 and all("computed in" in m for m in said), said
    monitor = {k: tmp_path / k / "labels" / "_monitor" for k in ("read", "computed")}
    read, computed = (json.loads((monitor[k] / "reference.json").read_text()) for k in ("read", "computed"))
    assert read["key"] == computed["key"] and read["key"].endswith(
        json.loads((tiny_repo / "data" / "monitor_reference" / "reference.json").read_text())["key"])
    assert read["label_counts"] == computed["label_counts"] and read["domains"] == computed["domains"]
    assert read["confidences"] == pytest.approx(computed["confidences"], abs=1e-5)
    assert read["threshold"] == pytest.approx(computed["threshold"], abs=1e-5) and read["accuracy"] == computed["accuracy"]
    with np.load(monitor["read"] / "inputs.npz") as a, np.load(monitor["computed"] / "inputs.npz") as b:
        assert str(a["key"]) == str(b["key"]) and np.allclose(a["components"], b["components"], atol=1e-6)


def test_a_batch_that_lost_its_monitor_row_and_report_gets_them_on_the_next_run(tiny_repo, tmp_path):
    """A run stopped between the label commit and the monitor row / report (a full disk, a kill): the next
    run, with nothing new to label, writes them from the label store; an empty partition a failed first
    write left behind is removed, so pyarrow.dataset reads the monitor store's columns again."""
    import logging

    import pyarrow.dataset as ds

    store, inbox = tmp_path / "s", tmp_path / "inbox"
    inbox.mkdir()
    _good_inbox(tiny_repo, inbox, 40)
    relabel_here(tiny_repo, inbox, store, "--batch-size", "64")
    monitor_dir, reports = store / "labels" / "_monitor", store / "labels" / "_reports"
    [part] = part_files(monitor_dir)
    row = read_table(monitor_dir).to_pylist()[0]
    part.unlink()
    part.parent.rmdir()
    (monitor_dir / "date=2020-01-01").mkdir()  # an empty partition, as a failed first write left one
    for f in reports.glob("*/*.md"):
        f.unlink()
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda rec: records.append(rec.getMessage())  # what the job logs, wherever its handlers write
    logging.getLogger("sda.relabel").addHandler(handler)
    try:
        relabel_here(tiny_repo, inbox, store)
        healed_lines = list(records)
        records.clear()
        relabel_here(tiny_repo, inbox, store)  # healed once: nothing more to write
    finally:
        logging.getLogger("sda.relabel").removeHandler(handler)
    assert any(f"batch {row['batch_id']} was committed without its monitor row and report" in m for m in healed_lines), \
        healed_lines
    assert not any("was committed without" in m for m in records), records
    healed = read_table(monitor_dir).to_pylist()
    assert [(h["batch_id"], h["images"], h["run_id"]) for h in healed] == [(row["batch_id"], 40, row["run_id"])]
    assert healed[0]["estimated_accuracy"] == pytest.approx(row["estimated_accuracy"])
    assert len(list(reports.glob(f"*/{row['batch_id']}.md"))) == 1
    assert "batch_id" in ds.dataset(monitor_dir, partitioning="hive").schema.names


def test_guarded_adaptation_keeps_the_frozen_labels_of_a_one_class_batch(tiny_repo, tmp_path):
    """relabel.adapt: sda+bn adapts SDA's classifiers to a batch only where the guard allows it: a batch
    of one class (the class-sorted stream, where batch statistics mislead) keeps the frozen labels."""
    one_class = [img for img, y in _target_images(tiny_repo, 180, "clean") if y == 3][:16]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i, img in enumerate(one_class):
        (inbox / f"i{i:02d}.png").write_bytes(png_bytes(img))
    shutil.copytree(inbox, tmp_path / "inbox2")
    frozen = _summary(relabel_here(tiny_repo, inbox, tmp_path / "s1", "--batch-size", "16"))
    guarded = _summary(relabel_here(tiny_repo, tmp_path / "inbox2", tmp_path / "s2", "--batch-size", "16",
                                   "--adapt", "sda+bn"))
    assert frozen["adapt"] == "frozen" and guarded["adapt"] == "sda+bn"
    assert guarded["labelled"] == 16 and guarded["adapted"] == 0
    labels = [{r["sha256"]: (r["label"], round(r["confidence"], 5)) for r in read_table(tmp_path / s / "labels").to_pylist()}
              for s in ("s1", "s2")]
    assert labels[0] == labels[1]


def test_kill_9_at_random_points_then_rerun_labels_each_file_exactly_once(tiny_repo, tmp_path):
    inbox, store = tmp_path / "inbox", tmp_path / "store"
    inbox.mkdir()
    truth = _good_inbox(tiny_repo, inbox, 160, domain="gaussian_noise")
    (inbox / "zero.png").write_bytes(b"")
    (inbox / "text.png").write_text("nope")
    rng = random.Random(1)
    kills, committed_at_kill = 0, []
    cmd = [sys.executable, "-m", "flows.relabel", "--inbox", str(inbox), "--labels", str(store / "labels"),
           "--quarantine", str(store / "quarantine"), "--batch-size", "4"]
    for _ in range(5):
        before = len(part_files(store / "labels"))
        proc = subprocess.Popen(cmd, cwd=tiny_repo, env=subprocess_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 120  # wait for this run's first commit, then kill at a random point
        while time.time() < deadline and len(part_files(store / "labels")) <= before and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.15))
        if proc.poll() is not None:
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        committed_at_kill.append(len(read_table(store / "labels")))
    mid_run = sum(n < 160 for n in committed_at_kill)
    assert mid_run >= 3, f"only {mid_run} kills interrupted the work: {committed_at_kill}"
    relabel_here(tiny_repo, inbox, store, "--batch-size", "4")

    rows = read_table(store / "labels").to_pylist()
    assert len(rows) == 160 == len({r["sha256"] for r in rows})
    assert {r["source_path"] for r in rows} == set(truth)
    q = read_table(store / "quarantine" / "table").to_pylist()
    assert sorted(r["file"] for r in q) == ["text.png", "zero.png"]
    assert not list(store.rglob("*.tmp-*"))
    print(f"kill -9 trials: {kills}; rows committed at each kill: {committed_at_kill}; final 160/160 once")


def test_two_concurrent_runs_never_duplicate_a_row(tiny_repo, tmp_path):
    inbox, store = tmp_path / "inbox", tmp_path / "store"
    inbox.mkdir()
    _good_inbox(tiny_repo, inbox, 48)
    cmd = [sys.executable, "-m", "flows.relabel", "--inbox", str(inbox), "--labels", str(store / "labels"),
           "--quarantine", str(store / "quarantine"), "--batch-size", "4"]
    procs = [subprocess.Popen(cmd, cwd=tiny_repo, env=subprocess_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    labelled = sorted(json.loads(o[o.index("{"):])["labelled"] for o, _ in outs)
    assert labelled == [0, 48]  # one run did the work, the other waited for the lock and found it done
    rows = read_table(store / "labels").to_pylist()
    assert len(rows) == 48 == len({r["sha256"] for r in rows})


def test_two_runs_with_their_own_labels_but_one_quarantine_are_serialised(tiny_repo, tmp_path):
    """Different --labels, the same --quarantine: the quarantine store's lock serialises them, so
    neither deletes the other's temporaries and every bad file of both inboxes gets its row."""
    quarantine = tmp_path / "quarantine"
    cmds = []
    for name in ("a", "b"):
        inbox = tmp_path / f"inbox-{name}"
        inbox.mkdir()
        _good_inbox(tiny_repo, inbox, 24, domain="clean" if name == "a" else "pixelate")
        for i in range(3):
            (inbox / f"bad-{name}-{i}.png").write_bytes(f"not an image {name}{i}".encode())
        cmds.append([sys.executable, "-m", "flows.relabel", "--inbox", str(inbox), "--labels",
                     str(tmp_path / f"labels-{name}"), "--quarantine", str(quarantine), "--batch-size", "4"])
    procs = [subprocess.Popen(c, cwd=tiny_repo, env=subprocess_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [(s["labelled"], s["quarantined"]) for s in (json.loads(o[o.index("{"):]) for o, _ in outs)] == [(24, 3)] * 2
    for name in ("a", "b"):
        assert len(read_table(tmp_path / f"labels-{name}")) == 24
    q = read_table(quarantine / "table").to_pylist()
    assert sorted(r["file"] for r in q) == sorted(f"bad-{n}-{i}.png" for n in "ab" for i in range(3))
    assert all(r["reason"] for r in q)
    assert len(list((quarantine / "files").rglob("*.png"))) == 6
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_a_stalled_upload_is_left_in_the_inbox_and_labelled_once_complete(tiny_repo, tmp_path):
    """An upload that stalls longer than min_age_seconds looks truncated: within upload_grace_seconds
    of its last change it stays in the inbox (not quarantined, not deleted); complete, it is labelled."""
    inbox, store = tmp_path / "inbox", tmp_path / "store"
    inbox.mkdir()
    full = png_bytes(_target_images(tiny_repo, 1)[0][0])
    (inbox / "upload.png").write_bytes(full[: len(full) // 2])
    s = _summary(relabel_here(tiny_repo, inbox, store, "--upload-grace", "900"))
    assert (s["labelled"], s["quarantined"], s["deferred"]) == (0, 0, 1)
    assert (inbox / "upload.png").read_bytes() == full[: len(full) // 2]
    assert read_table(store / "quarantine" / "table") is None
    with open(inbox / "upload.png", "ab") as f:  # the upload resumes and completes
        f.write(full[len(full) // 2:])
    s = _summary(relabel_here(tiny_repo, inbox, store, "--upload-grace", "900"))
    assert (s["labelled"], s["quarantined"], s["deferred"]) == (1, 0, 0)


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One seeded mutation of a valid file: flipped bytes, a cut, an insertion, a duplicated run or
    an overwritten header field (sizes, lengths), as a fuzzer would."""
    b = bytearray(data)
    kind = int(rng.integers(5))
    if kind == 0:
        for i in rng.integers(0, len(b), int(rng.integers(1, 8))):
            b[i] ^= int(rng.integers(1, 256))
    elif kind == 1:
        b = b[: int(rng.integers(1, len(b)))]
    elif kind == 2:
        i = int(rng.integers(len(b)))
        b[i:i] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif kind == 3:
        i, n = int(rng.integers(len(b))), int(rng.integers(1, 512))
        b[i:i] = b[i: i + n] * int(rng.integers(1, 4))
    else:  # a header field (PNG IHDR size, JPEG SOF size, RIFF length, tar size) set to a big value
        i = int(rng.integers(0, min(len(b) - 4, 600)))
        b[i: i + 4] = bytes([0x7F, 0xFF, 0xFF, int(rng.integers(256))])
    return bytes(b)


def test_fuzzed_files_are_each_labelled_or_quarantined_and_the_run_never_crashes(tiny_repo, tmp_path):
    """A few hundred seeded mutations of valid PNG / JPEG / WebP files and tars through the real CLI:
    exit 0, every distinct file labelled or quarantined with a reason, memory bounded."""
    import resource

    inbox, store = tmp_path / "inbox", tmp_path / "store"
    inbox.mkdir()
    rng = np.random.default_rng(2026)
    seeds = {}
    for i, (img, _) in enumerate(_target_images(tiny_repo, 24)):
        for fmt in ("PNG", "JPEG", "WEBP"):
            buf = io.BytesIO()
            Image.fromarray(img).resize((32, 32)).save(buf, format=fmt)
            seeds[f"{i}.{fmt.lower()}"] = buf.getvalue()
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w") as tar:
        for name in list(seeds)[:6]:
            info = tarfile.TarInfo(name.replace("webp", "png"))
            info.size = len(seeds[name])
            tar.addfile(info, io.BytesIO(seeds[name]))
    names = sorted(seeds)
    for k in range(240):
        name = names[int(rng.integers(len(names)))]
        (inbox / f"f{k:03d}-{name}").write_bytes(_mutate(seeds[name], rng))
    for k in range(10):
        (inbox / f"t{k}.tar").write_bytes(_mutate(tar_buf.getvalue(), rng))
    for p in inbox.iterdir():
        os.utime(p, (time.time() - 3600,) * 2)
    plain = {p.name: sha256_file(p) for p in inbox.iterdir() if p.suffix != ".tar"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = relabel_cli(tiny_repo, inbox, store, "--upload-grace", "0")
    s = _summary(r)
    assert r.returncode == 0 and s["labelled"] > 0 and s["quarantined"] > 0
    labelled = read_table(store / "labels").to_pylist()
    quarantined = read_table(store / "quarantine" / "table").to_pylist()
    assert len(labelled) == s["labelled"] and len(quarantined) == s["quarantined"]
    assert all(q["reason"] for q in quarantined)
    # every plain file ended as a label row or a quarantine row (by its content hash)
    ended = {r["sha256"] for r in labelled} | {q["sha256"] for q in quarantined}
    assert {n for n, h in plain.items() if h not in ended} == set()
    peak_mb = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    assert peak_mb < 4096, f"relabel CLI peak RSS {peak_mb:.0f} MB"


def test_clear_errors_for_a_missing_inbox_and_missing_models(tiny_repo, tmp_path):
    r = relabel_cli(tiny_repo, tmp_path / "no-such-inbox", tmp_path / "s", check=False)
    assert r.returncode == 2 and "no-such-inbox" in r.stderr and "relabel.inbox" in r.stderr
    assert "Traceback" not in r.stderr
    # the other mistakes through the same main() in this process (an exception would escape it)
    (tmp_path / "a-file").write_bytes(b"not a folder")
    s = tmp_path / "s"
    r = relabel_main(tiny_repo, "--inbox", str(tmp_path / "a-file"), "--labels", str(s / "labels"),
                     "--quarantine", str(s / "quarantine"))
    assert r.returncode == 2 and "a-file is not a folder" in r.stderr
    (tmp_path / "in2").mkdir()
    r = relabel_main(tiny_repo, "--inbox", str(tmp_path / "in2"), "--labels", str(tmp_path / "a-file" / "store"),
                     "--quarantine", str(s / "quarantine"))
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ")  # cannot create it
    empty = tmp_path / "empty-root"
    (empty / "data").mkdir(parents=True)
    (empty / "params.yaml").write_text((tiny_repo / "params.yaml").read_text())
    r = relabel_main(empty, "--inbox", str(tmp_path / "in2"))
    assert r.returncode == 2 and "run the pipeline first" in r.stderr


# -- the service ----------------------------------------------------------------------------------
def _flow_runs(env: dict, deployment: str) -> dict:
    """The server's record of ``deployment`` ("flow/name"), through its REST API: its flow runs (state,
    parameters; newest first), schedules, whether it is paused, and the keys of every artifact."""
    import httpx

    with httpx.Client(base_url=env["PREFECT_API_URL"] + "/", timeout=30,
                      auth=tuple(env["PREFECT_API_AUTH_STRING"].split(":", 1))) as api:
        def call(method: str, path: str, **kw):
            r = api.request(method, path, **kw)
            r.raise_for_status()
            return r.json()

        dep = call("GET", f"deployments/name/{deployment}")
        runs = call("POST", "flow_runs/filter", json={"deployments": {"id": {"any_": [dep["id"]]}}, "sort": "ID_DESC"})
        arts = call("POST", "artifacts/filter", json={})
    return dict(runs=[dict(state=r["state_type"], params=r["parameters"]) for r in runs],
                schedules=[x["schedule"] for x in dep["schedules"]], paused=dep["paused"],
                artifacts=sorted({a["key"] for a in arts if a["key"]}))


def test_service_deployments_on_a_real_local_server(tiny_repo, tmp_path):
    """make serve's script on a random port: serve the deployments, run relabel/on-demand and
    sda-pipeline/embedded through it, and let relabel/scheduled fire on its own (its interval from
    params.yaml alone); then a drifted batch: its event reaches the server, whose automation runs the
    alert (artifact relabel-drift) and pauses relabel/scheduled (relabel.monitor.pause_on_drift)."""
    repo = tmp_path / "repo"  # a private copy: the params edit and the inbox / labels stay in this test
    shutil.copytree(tiny_repo, repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["relabel"]["interval_minutes"] = 0.1  # the scheduled deployment fires every 6 s
    ondemand = tmp_path / "ondemand"  # a folder besides relabel.inbox that the service may be aimed at
    params["relabel"]["served_inboxes"] = [str(ondemand)]
    params["relabel"]["monitor"]["pause_on_drift"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    port = free_port()
    env = subprocess_env()
    # the runner of make serve looks for runs to start every second (Prefect's default: 10 s)
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
               PREFECT_RUNNER_POLL_FREQUENCY="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    serve = subprocess.Popen([sys.executable, "-m", "flows.serve", "--port", str(port)], cwd=repo, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = _pump_lines(serve, until="ready.", timeout=240)
        assert any(x.startswith("ready.") for x in lines), "".join(lines)
        # basic authentication is on: a credential created once, owner-only; no request without it
        cred_file = tmp_path / "prefect-home" / "api-auth"
        assert cred_file.stat().st_mode & 0o777 == 0o600
        cred = cred_file.read_text().strip()
        assert cred.startswith("sda:") and len(cred) > 20
        import httpx

        api = env["PREFECT_API_URL"]
        assert httpx.post(f"{api}/deployments/filter", json={}, timeout=10).status_code == 401
        assert httpx.post(f"{api}/deployments/filter", json={}, timeout=10,
                          auth=tuple(cred.split(":", 1))).status_code == 200
        env["PREFECT_API_AUTH_STRING"] = cred
        # the scheduled relabel watches the params inbox (created by serve): drop images there
        _good_inbox(repo, repo / "data" / "inbox", 6)
        scheduled = {sha256_file(p) for p in (repo / "data" / "inbox").rglob("*.png")}
        ondemand.mkdir()
        _good_inbox(repo, ondemand, 10, domain="pixelate")
        prefect = str(Path(sys.executable).parent / "prefect")
        r = subprocess.run([prefect, "deployment", "run", "relabel/on-demand", "-p", f"inbox={ondemand}",
                            "--watch", "--watch-timeout", "300"], env=env, capture_output=True, text=True, timeout=420)
        assert r.returncode == 0 and "Completed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
        r = subprocess.run([prefect, "deployment", "run", "sda-pipeline/embedded", "--watch", "--watch-timeout", "300"],
                           env=env, capture_output=True, text=True, timeout=420)
        assert r.returncode == 0 and "Completed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
        # a deployment cannot be aimed at another checkout
        r = subprocess.run([prefect, "deployment", "run", "relabel/on-demand", "-p", f"root={tmp_path}",
                            "-p", f"inbox={ondemand}", "--watch", "--watch-timeout", "120"], env=env,
                           capture_output=True, text=True, timeout=240)
        assert r.returncode != 0 and "Failed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
        # nor at a folder params.yaml does not name: nothing there is read, labelled or deleted
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        _good_inbox(repo, elsewhere, 2)
        before = sorted(p.name for p in elsewhere.rglob("*.png"))
        r = subprocess.run([prefect, "deployment", "run", "relabel/on-demand", "-p", f"inbox={elsewhere}",
                            "--watch", "--watch-timeout", "120"], env=env, capture_output=True, text=True, timeout=240)
        assert r.returncode != 0 and "Failed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
        assert sorted(p.name for p in elsewhere.rglob("*.png")) == before

        deadline = time.time() + 180
        while time.time() < deadline and not scheduled <= committed_hashes(repo / "data" / "labels"):
            time.sleep(3)
        sched = _flow_runs(env, "relabel/scheduled")
        assert any(x["state"] == "COMPLETED" for x in sched["runs"]), sched["runs"][:5]
        assert scheduled <= committed_hashes(repo / "data" / "labels")
        assert sched["schedules"][0]["interval"] == 6.0
        assert {"relabel-batch", "relabel-run", "sda-results"} <= set(sched["artifacts"])

        rows = read_table(repo / "data" / "labels").to_pylist()
        assert len(rows) == len({r["sha256"] for r in rows}) == 16
        assert all(r["flow_run_id"] for r in rows)  # run through Prefect

        # drift: so far every batch was too small to tell; now one class only, from three domains
        assert "relabel-drift" not in sched["artifacts"] and not sched["paused"]
        skewed = [img for d in ("clean", "gaussian_noise", "pixelate") for img, y in _target_images(repo, 180, d) if y == 3]
        for i, img in enumerate(skewed):
            (ondemand / f"skewed-{i:03d}.png").write_bytes(png_bytes(img))
        r = subprocess.run([prefect, "deployment", "run", "relabel/on-demand", "-p", f"inbox={ondemand}", "-p",
                            "batch_size=64", "--watch", "--watch-timeout", "300"], env=env, capture_output=True,
                           text=True, timeout=420)  # one batch: the monitor tests each batch
        assert r.returncode == 0 and "Completed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
        deadline = time.time() + 120
        while time.time() < deadline:  # the server's triggers and actions services act within seconds
            sched = _flow_runs(env, "relabel/scheduled")
            alert = _flow_runs(env, "relabel-drift-alert/on-drift")
            if sched["paused"] and any(x["state"] == "COMPLETED" for x in alert["runs"]):
                break
            time.sleep(2)
        assert sched["paused"], "relabel/scheduled was not paused after the drift"
        assert [x["state"] for x in alert["runs"]] == ["COMPLETED"], alert["runs"]
        payload = alert["runs"][0]["params"]["alert"]  # (images seen in the earlier runs are not labelled again)
        assert payload["drift"] and 30 <= payload["images"] <= len(skewed)
        assert Path(payload["checkout"]) == repo.resolve()
        assert "relabel-drift" in alert["artifacts"]
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
