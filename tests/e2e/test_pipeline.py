"""End to end: the real DVC pipeline (every stage, real shards, real models) on tiny params, in a
temporary copy of this repository; then caching, experiments, metrics / plots, a stage killed
half-way, and the Prefect flow over the same repo."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sda.io.atomic import sha256_file
from sda.io.shards import load_shards, read_manifest
from sda.method.catalog import method_names
from sda.method.scoring import MAIN_METHODS
from tests.support import subprocess_env, sh
from tasks import STAGES

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def repo(tiny_repo) -> Path:
    sh(tiny_repo, "dvc", "repro")  # up to date whatever ran before (the session's other modules share it)
    return tiny_repo


@pytest.fixture
def own_repo(repo, tmp_path) -> Path:
    """A private copy of the repository (git, DVC cache, outputs) for a test that changes params or
    outputs: nothing it does reaches the other tests, whatever order they run in."""
    dst = tmp_path / "repo"
    shutil.copytree(repo, dst)
    return dst


def test_every_stage_output(repo):
    data = repo / "data"
    counts = {s: read_manifest(data / "source_data" / s)["count"] for s in ("train", "val", "test")}
    assert counts == {"train": 1077, "val": 180, "test": 540}
    assert (data / "source_model" / "model.safetensors").is_file()
    assert json.loads((data / "diffusion_finetune" / "info.json").read_text())["null_label"] == 10
    assert (data / "diffusion_finetune" / "unet" / "config.json").is_file()

    synth = load_shards(data / "synth_generate")
    assert len(read_manifest(data / "synth_generate")["shards"]) == 4  # 30 images, 8 per shard
    assert len(synth.keys) == 30 and sorted(synth.labels.tolist()) == sorted(list(range(10)) * 3)
    aligned = load_shards(data / "synth_align")
    assert aligned.keys == synth.keys and (aligned.labels == synth.labels).all()
    assert (aligned.images != synth.images).any()
    assert (data / "synth_generate" / "plan.parquet").is_file()
    assert (data / "classifier_align" / "config.json").is_file()
    # the projection's work, counted: 3 guided steps (tiny params: N=3) of a forward and a backward
    compute = json.loads((data / "target_project" / "compute.json").read_text())
    assert compute["method"] == "dda" and compute["forwards"] == compute["backwards"] == 3 * compute["images"]
    assert compute["forward_equivalents_per_image"] == 9.0
    per_method = json.loads((repo / "metrics" / "evaluate.json").read_text())["compute"]["unet_forward_equivalents_per_image"]
    assert per_method == {"source": 0.0, "dda": 9.0, "dda_ens": 9.0, "sda": 9.0}

    domains = json.loads((data / "target_data" / "domains.json").read_text())["domains"]
    assert domains == ["clean", "gaussian_noise", "pixelate"]
    val_keys = load_shards(data / "source_data" / "val").keys  # TINY evaluates on the val split
    for d in domains:
        orig, proj = load_shards(data / "target_data" / d), load_shards(data / "target_project" / d)
        assert orig.keys == proj.keys == val_keys
        assert len(read_manifest(data / "target_project" / d)["shards"]) == 3

    metrics = json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert set(metrics["domains"]) == set(domains)
    for acc in list(metrics["domains"].values()) + [metrics["mean"]]:
        assert set(acc) == set(MAIN_METHODS)
        assert all(0.0 <= v <= 100.0 for v in acc.values())
    m = metrics["domains"]
    assert metrics["mean"]["source"] == pytest.approx((m["gaussian_noise"]["source"] + m["pixelate"]["source"]) / 2, abs=0.01)
    assert m["clean"]["source"] > 80  # the source model works on its own domain
    assert (repo / "metrics" / "projection_grid.png").stat().st_size > 1000
    assert (repo / "metrics" / "per_domain.csv").read_text().startswith("domain,source,dda,dda_ens,sda\n")
    protocol = metrics["protocol"]  # what the numbers were measured under
    assert protocol["split"] == "val" and protocol["images_per_domain"] == 180 and protocol["seed"] == 0
    assert len(protocol["params_sha256"]) == 64 and len(protocol["code_version"]) == 40  # a clean git revision
    # outs are content only: no timings or run records inside them; those go to data/.runs
    assert not list((repo / "data").glob("*/run.json")) and not list((repo / "data").rglob("progress.json"))
    assert not any("seconds" in s for s in read_manifest(data / "synth_generate")["shards"])
    assert json.loads((data / ".runs" / "synth_generate.json").read_text())["summary"]["shards"] == 4


def test_streams_compare_input_and_model_adaptation(repo):
    """The streams stage: every registered method on every stream of TINY, the frozen methods the same on
    every stream, BN misled by class-sorted batches, the guard's decisions counted, the costs counted."""
    m = json.loads((repo / "metrics" / "streams.json").read_text())
    assert list(m["streams"]) == ["iid", "mixed", "class_sorted", "batch1"]
    for name, row in m["streams"].items():
        assert list(row) == list(method_names()), name
        for e in row.values():
            assert set(e["domains"]) == {"gaussian_noise", "pixelate"} and 0 <= e["mean"] <= 100
    assert m["streams"]["batch1"]["sda"]["images_per_domain"] == 12 and m["common_images_per_domain"] == 12
    # input adaptation and MEMO: a function of the image, the same on every stream's shared images
    for method in ("source", "dda", "dda_ens", "sda", "diffpure", "memo"):
        assert m["methods"][method]["spread"] == 0, method
    assert m["streams"]["iid"]["memo"]["images_adapted"] == 8 and m["streams"]["iid"]["memo"]["classifier_forwards"] == 3
    # BN on a batch of two or three classes normalises the classes away
    assert m["streams"]["class_sorted"]["bn"]["mean"] < m["streams"]["iid"]["bn"]["mean"]
    for name, row in m["streams"].items():
        guard = row["sda+bn"]["guard"]
        assert sum(guard.values()) == 2 * row["sda"]["images_per_domain"], name
    assert m["streams"]["class_sorted"]["sda+bn"]["guard"].get("concentrated", 0) > 0
    # 12 images a domain, one at a time: never the 16 the guard needs, so frozen SDA throughout
    assert m["streams"]["batch1"]["sda+bn"]["guard"] == {"too_few": 24}
    assert m["streams"]["batch1"]["sda+bn"]["mean"] == m["streams"]["batch1"]["sda"]["mean"]
    iid = m["streams"]["iid"]
    assert iid["sda"]["unet_forward_equivalents"] == 9.0 and iid["diffpure"]["unet_forward_equivalents"] == 1.0
    assert iid["bn"]["classifier_backwards"] == 0 < iid["tent"]["classifier_backwards"]
    # SAR steps (its second forward on the whole batch); CoTTA on its subset, said so; LAME learns nothing
    assert iid["sar"]["steps"] >= 0 and iid["sar"]["model_resets"] >= 0  # counted (tests/unit: that it steps)
    assert iid["cotta"]["images_adapted"] == 2 * 20 and "source_same_images" in iid["cotta"]
    assert iid["lame"]["classifier_backwards"] == 0 and iid["eata"]["fisher_images"] == 64
    assert m["streams"]["batch1"]["bn"]["classifier_forwards"] > 1  # the sliding window's forwards
    # what the reference's batch-wide norm changes; the per-image norm changes nothing
    assert m["batch_coupling"]["per_sample_norm"]["labels_changed_pct"] == 0
    table = (repo / "metrics" / "streams.md").read_text()
    assert table.startswith("| method | iid (b10, 40/domain) |") and "| sda+tent |" in table and "| roid |" in table
    assert (repo / "metrics" / "streams.png").stat().st_size > 1000


FLIP = '''"""Flip TTA (a test's method): the source model's softmax averaged over the image and its mirror."""

import numpy as np
import torch
from pydantic import Field

from sda.config import Section
from sda.method.baselines.base import ClassifierCost
from sda.method.registry import StreamMethod, register_method


class FlipParams(Section):
    weight: float = Field(0.5, ge=0, le=1, description="Weight of the mirrored image.")


class Flip:
    unet_forward_equivalents = 0.0

    def __init__(self, ctx):
        self.source, self.device, self.w = ctx.source, ctx.device, ctx.params.weight
        self.cost = ClassifierCost()

    def reset(self):
        pass

    def __call__(self, batch):
        mirrored = np.ascontiguousarray(batch.originals[:, :, ::-1])
        self.cost.forwards += 2 * len(batch)
        return ((1 - self.w) * batch.frozen["source_orig"].softmax(1)
                + self.w * self.source.logits(mirrored, device=self.device).softmax(1))

    def extra(self):
        return {"mirror_weight": self.w}


register_method(StreamMethod(name="flip", description="softmax over the image and its mirror", kind="input",
                             per_image=True, params_model=FlipParams, build=Flip))
'''


def test_a_new_method_is_one_module_and_its_params_section(own_repo):
    """Adding a method is its module in sda/method/baselines/ plus its params section: dropped into a copy,
    ``dvc repro`` runs the streams stage again and every stream's row holds it."""
    (own_repo / "sda" / "method" / "baselines" / "flip.py").write_text(FLIP)
    params = yaml.safe_load((own_repo / "params.yaml").read_text())
    params["streams"]["flip"] = {"weight": 0.25}
    (own_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = sh(own_repo, "git", "status", "--porcelain", "--", "sda", "tasks", "flows", "params.yaml",
                 "dvc.yaml").stdout.split()
    assert changed == ["M", "params.yaml", "??", "sda/method/baselines/flip.py"], changed
    r = sh(own_repo, "dvc", "repro", "streams", timeout=900)
    assert "Running stage 'streams'" in r.stdout, r.stdout[-2000:]
    m = json.loads((own_repo / "metrics" / "streams.json").read_text())
    for name, row in m["streams"].items():
        assert "flip" in row and row["flip"]["mirror_weight"] == 0.25 and row["flip"]["classifier_forwards"] == 2, name
    assert m["methods"]["flip"]["spread"] == 0  # per image: the same on every stream
    assert "| flip |" in (own_repo / "metrics" / "streams.md").read_text()
    # its section is validated by its own model
    params["streams"]["flip"] = {"weight": 2.0}
    (own_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bad = sh(own_repo, sys.executable, "-m", "tasks.streams", check=False)
    assert bad.returncode == 2 and "streams.flip.weight" in bad.stderr, bad.stderr[-2000:]
    # the module counts as the streams stage's code: `tasks.code_deps --write` would list it
    deps = sh(own_repo, sys.executable, "-m", "tasks.code_deps").stdout
    assert "sda/method/baselines/flip.py" in next(line for line in deps.splitlines() if line.startswith("streams:"))


def test_the_run_measures_its_synthetic_domain_and_says_it_is_weak(repo):
    """TINY trains the diffusion model for 40 steps: its samples are noise. classifier_align measures
    that (no target label), warns naming the setting, and evaluate carries it into the metrics and
    the table; a rejected alignment makes the sda column DDA's."""
    alignment = json.loads((repo / "metrics" / "alignment.json").read_text())
    syn = alignment["synthetic"]
    assert set(syn) == {"synth_generate", "synth_align"}
    assert syn["synth_generate"]["images"] == 30 and len(syn["synth_generate"]["per_class"]) == 10
    assert all(0 <= a <= 100 for s in syn.values() for a in [s["accuracy"], *s["per_class"].values()])
    val = alignment["projected_val"]
    # the paper's last epoch is kept (select_epoch off by default): scored every epoch, no selection
    assert val["images"] == 180 and len(val["per_epoch"]) == 1 and val["selected_epoch"] is None
    assert val["per_epoch"][-1] == val["aligned"]
    weak = [w for w in alignment["warnings"] if w.startswith("synth_generate:")]
    assert weak and "diffusion_finetune.train_steps (now 40)" in weak[0], alignment["warnings"]
    aligned = json.loads((repo / "data" / "classifier_align" / "config.json").read_text())
    assert alignment["fallback"] == (aligned.get("fallback") == "dda")
    assert alignment["fallback"] == (val["aligned"] < val["source"] - alignment["thresholds"]["max_val_drop"])
    metrics = json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert metrics["alignment"] == alignment and metrics["warnings"] == alignment["warnings"]
    if alignment["fallback"]:
        assert all(acc["sda"] == acc["dda"] for acc in metrics["domains"].values())
        assert any(w.startswith("classifier_align:") and "falls back to DDA" in w for w in alignment["warnings"])
    table = (repo / "metrics" / "results.md").read_text()
    assert "Synthetic domain, measured without target labels" in table and "**Warning** synth_generate:" in table
    shown = json.loads(sh(repo, "dvc", "metrics", "show", "--json").stdout)
    assert "metrics/alignment.json" in json.dumps(shown)


def test_training_metrics_and_curves_of_the_three_training_stages(repo):
    """source_model, diffusion_finetune and classifier_align write DVC metrics (dvc metrics show has them)
    and a curve each (dvc plots show draws them), matching what the models' own records say."""
    import csv

    shown = json.loads(sh(repo, "dvc", "metrics", "show", "--json").stdout)
    flat = json.dumps(shown)
    for stage in ("source_model", "diffusion_finetune", "classifier_align"):
        assert f"metrics/{stage}.json" in flat, stage
    source = json.loads((repo / "metrics" / "source_model.json").read_text())
    config = json.loads((repo / "data" / "source_model" / "config.json").read_text())
    assert source["epochs"] == 8 and source["val_acc"] == pytest.approx(config["val_acc"], abs=1e-3)
    rows = list(csv.DictReader((repo / "metrics" / "training" / "source_model.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])  # it learned
    diffusion = json.loads((repo / "metrics" / "diffusion_finetune.json").read_text())
    rows = list(csv.DictReader((repo / "metrics" / "training" / "diffusion_finetune.csv").open()))
    assert diffusion["steps"] == 40 and [int(r["step"]) for r in rows] == [40]
    aligned = json.loads((repo / "metrics" / "classifier_align.json").read_text())
    alignment = json.loads((repo / "metrics" / "alignment.json").read_text())
    assert aligned["val_projected_aligned"] == alignment["projected_val"]["aligned"]
    rows = list(csv.DictReader((repo / "metrics" / "training" / "classifier_align.csv").open()))
    assert list(rows[0]) == ["epoch", "loss", "acc", "val_projected"] and len(rows) == aligned["epochs"] == 1
    sh(repo, "dvc", "plots", "show", "-o", str(repo / "plots_training"))
    html = (repo / "plots_training" / "index.html").read_text()
    for title in ("Source model, loss per epoch", "Diffusion model, loss (mean of 50 steps)",
                  "Aligned classifier, top-1 % per epoch (training stream, projected source val)"):
        assert title in html, title


def test_second_repro_runs_nothing(repo):
    lock = (repo / "dvc.lock").read_text()
    r = sh(repo, "dvc", "repro")
    assert "Running stage" not in r.stdout
    assert (repo / "dvc.lock").read_text() == lock
    assert "up to date" in sh(repo, "dvc", "status").stdout.lower()


def test_only_the_active_profiles_params_make_a_stage_stale(own_repo):
    """Each stage's DVC params are what it reads under the active profile (dvc.yaml: profiles.${profile}
    and the domain section ${profile}): the other domains' sections and profiles change nothing; an
    override of the active profile makes exactly the stages that read it (and what follows) stale."""
    repo = own_repo
    text = (repo / "params.yaml").read_text()

    def status_after(edit) -> str:
        raw = yaml.safe_load(text)
        edit(raw)
        (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        return sh(repo, "dvc", "status").stdout

    edits = [lambda p: p["imagenet"].update(val_dir="/elsewhere/val"),
             lambda p: p["folder"].update(source_dir="my/images", image_size=64),
             lambda p: p["profiles"]["imagenet"]["projection"].update(N=10),
             lambda p: p["profiles"]["folder"]["evaluate"].update(batch_size=7)]
    for edit in edits:
        assert "up to date" in status_after(edit).lower()
    out = status_after(lambda p: p["profiles"]["embedded"].update(projection={"N": 2}))
    stale = [s for s in STAGES if re.search(rf"^{s}:", out, re.M)]  # DVC names the stages whose params changed
    assert stale == ["synth_align", "classifier_align", "target_project", "evaluate", "streams",
                     "monitor_reference"], out
    out = status_after(lambda p: p["embedded"].update(max_shift=2))
    assert re.search(r"^source_data:", out, re.M), out


def test_forced_reruns_with_a_busy_core_keep_every_out_hash(repo):
    """``dvc repro -f -s <stage>`` of the training stages and a shard-writing one while another
    process keeps a core busy: byte-identical outs (dvc.lock unchanged), nothing downstream stale."""
    lock = (repo / "dvc.lock").read_text()
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        # the two training stages and a projection; generation's bytes: test_kill_and_resume_gives_the_same_bytes
        for stage in ("source_model", "classifier_align", "target_project"):
            r = sh(repo, "dvc", "repro", "-f", "-s", stage)
            assert f"Running stage '{stage}'" in r.stdout, r.stdout[-2000:]
    finally:
        burner.kill()
        burner.wait()
    assert (repo / "dvc.lock").read_text() == lock
    assert "up to date" in sh(repo, "dvc", "status").stdout.lower()


def test_metrics_and_plots_commands(repo):
    shown = json.loads(sh(repo, "dvc", "metrics", "show", "--json").stdout)
    assert "metrics/evaluate.json" in json.dumps(shown)
    sh(repo, "dvc", "plots", "show", "-o", str(repo / "plots_html"))
    html = (repo / "plots_html" / "index.html").read_text()
    domains = [line.split(",")[0] for line in (repo / "metrics" / "per_domain.csv").read_text().split()[1:]]
    assert domains and all(f'"{d}"' in html for d in domains)  # the per-domain bars carry every domain
    grid = re.search(r'src="(static/[^"]*projection_grid\.png)"', html)
    assert grid and (repo / "plots_html" / grid.group(1)).read_bytes() == (repo / "metrics" / "projection_grid.png").read_bytes()


def test_exp_run_reruns_only_dependent_stages(own_repo):
    repo = own_repo
    r = sh(repo, "dvc", "exp", "run", "-S", "evaluate.grid_images=4")
    ran = [s for s in STAGES if f"Running stage '{s}'" in r.stdout]
    assert ran == ["evaluate"], r.stdout[-2000:]
    r = sh(repo, "dvc", "exp", "run", "-S", "classifier_align.epochs=2")
    ran = [s for s in STAGES if f"Running stage '{s}'" in r.stdout]
    # the monitor's reference is made from the aligned model: it follows it
    assert ran == ["classifier_align", "evaluate", "streams", "monitor_reference"], r.stdout[-2000:]


def test_the_projection_method_reaches_every_stage_that_projects(own_repo):
    """The targets are projected by what synth_align fixed (data/synth_align/projector): a new synthetic
    set alone leaves target_project alone; projection.method: distilled trains the student in synth_align
    (not diffusion_finetune) and every projection after it costs one forward per image."""
    repo = own_repo  # up to evaluate: streams reruns after classifier_align (test_exp_run_reruns_only_dependent_stages)
    r = sh(repo, "dvc", "exp", "run", "-S", "synth_generate.per_class=4", "evaluate")
    ran = [s for s in STAGES if f"Running stage '{s}'" in r.stdout]
    assert ran == ["synth_generate", "synth_align", "classifier_align", "evaluate"], r.stdout[-2000:]
    record = json.loads((repo / "data" / "synth_align" / "projector" / "projector.json").read_text())
    assert record["method"] == "dda" and record["N"] == 3

    r = sh(repo, "dvc", "exp", "run", "-S", "projection.method=distilled", "-S", "projection.distill_steps=20",
           "-S", "projection.distill_images=12", "-S", "projection.batch_size=8", "evaluate")
    ran = [s for s in STAGES if f"Running stage '{s}'" in r.stdout]
    assert ran == ["synth_align", "classifier_align", "target_project", "evaluate"], r.stdout[-2000:]
    student = repo / "data" / "synth_align" / "projector"
    record = json.loads((student / "projector.json").read_text())
    assert record["method"] == "distilled" and record["teacher"] == "ilvr" and record["pairs"] == 24
    assert record["distill_lowpass"] is True
    assert (student / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list((repo / "data" / ".work").glob("distill-*"))  # published, then the work copy removed
    for stage in ("synth_align", "target_project"):
        compute = json.loads((repo / "data" / stage / "compute.json").read_text())
        assert compute["method"] == "distilled" and compute["forwards"] == compute["images"], stage
        assert compute["backwards"] == 0 and compute["forward_equivalents_per_image"] == 1.0
    per_method = json.loads((repo / "metrics" / "evaluate.json").read_text())["compute"]["unet_forward_equivalents_per_image"]
    assert per_method == {"source": 0.0, "dda": 1.0, "dda_ens": 1.0, "sda": 1.0}


def test_queued_experiments_run_and_compare(own_repo):
    """`dvc exp run --queue` twice, `dvc queue start -j 1`: both run in DVC's temporary copies, and
    `dvc exp show` / `dvc plots diff` compare them with the training stages' metrics and curves."""
    repo = own_repo
    sh(repo, "git", "add", "-A")  # the finished run (dvc.lock, metrics) is the experiments' baseline
    sh(repo, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "run")
    for n in (4, 6):
        sh(repo, "dvc", "exp", "run", "--queue", "-n", f"grid-{n}", "-S", f"evaluate.grid_images={n}")
    sh(repo, "dvc", "queue", "start", "-j", "1")
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            status = sh(repo, "dvc", "queue", "status").stdout
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(3)
        assert status.count("Success") == 2, status
    finally:
        sh(repo, "dvc", "queue", "stop", "--kill", check=False)
    shown = json.dumps(json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout))
    for name in ("grid-4", "grid-6", "metrics/source_model.json", "metrics/diffusion_finetune.json",
                 "metrics/classifier_align.json", "val_projected_aligned", "final_loss"):
        assert name in shown, name
    sh(repo, "dvc", "plots", "diff", "grid-4", "grid-6", "-o", str(repo / "diff"))
    html = (repo / "diff" / "index.html").read_text()
    assert "grid-4" in html and "grid-6" in html and "Diffusion model, loss (mean of 50 steps)" in html


def test_an_unreachable_scheduler_is_a_user_error_that_publishes_nothing(own_repo):
    import socket

    repo = own_repo  # the failed run leaves its (resumable) work folder behind
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    out = repo / "data" / "synth_align"
    before = {str(p.relative_to(out)): sha256_file(p) for p in sorted(out.rglob("*")) if p.is_file()}
    t0 = time.time()
    r = sh(repo, "python", "-m", "tasks.synth_align", check=False,
           env={"SDA_DASK_SCHEDULER": address, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"no dask scheduler answered at {address} within 3s" in r.stderr, r.stderr[-2000:]
    assert time.time() - t0 < 120
    assert {str(p.relative_to(out)): sha256_file(p) for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert "synth_align" not in sh(repo, "dvc", "status").stdout


def _start_and_kill(repo: Path, stage: str, ready_glob: str, delay: float = 0.0, ready=None) -> None:
    """Start ``tasks.<stage>``, wait until ``ready_glob`` matches (and ``ready()`` is true), kill -9."""
    proc = subprocess.Popen([sys.executable, "-m", f"tasks.{stage}"], cwd=repo, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (list(repo.glob(ready_glob)) and (ready is None or ready())):
        time.sleep(0.02)
    time.sleep(delay)
    assert proc.poll() is None, f"{stage} finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _one_shard_recorded(repo: Path, stage: str) -> bool:
    """A shard of ``stage``'s work in progress is finished (renamed into place, then recorded)."""
    for f in repo.glob(f"data/.work/{stage}-*/progress.json"):
        try:
            if json.loads(f.read_text()).get("shards"):
                return True
        except ValueError:
            pass
    return False


def _set_scale(repo: Path, scale: float) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["projection"]["scale"] = scale  # another projection: the new output would differ
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_stage_killed_half_way_then_params_changed_then_resumed(own_repo):
    """kill -9 of target_project with one projection scale, then with another: the published output
    stays the previous, complete version both times, and the first run's work is dropped, never
    mixed in; the re-run through DVC resumes the second run's shards and leaves nothing behind."""
    repo = own_repo
    out = repo / "data" / "target_project"
    before = {d.name: read_manifest(d) for d in out.iterdir() if d.is_dir()}
    _set_scale(repo, 5.0)
    _start_and_kill(repo, "target_project", "data/.work/target_project-*/progress.json",
                    ready=lambda: _one_shard_recorded(repo, "target_project"))
    assert {d.name: read_manifest(d) for d in out.iterdir() if d.is_dir()} == before
    killed = list(repo.glob("data/.work/target_project-*"))
    assert len(killed) == 1 and (killed[0] / "progress.json").is_file()  # the work in progress is apart

    _set_scale(repo, 3.0)  # changed between the kill and the resume
    _start_and_kill(repo, "target_project", "data/.work/target_project-*/progress.json",
                    ready=lambda: _one_shard_recorded(repo, "target_project") and not killed[0].exists())
    assert not killed[0].exists()  # the other params' shards are gone, not reused
    assert {d.name: read_manifest(d) for d in out.iterdir() if d.is_dir()} == before

    sh(repo, "dvc", "repro", "target_project")
    assert not list(repo.glob("data/*.tmp-*")) and not list(repo.glob("data/.work/*"))
    assert {d.name for d in out.iterdir() if d.is_dir()} == set(before)
    assert not (out / "run.json").exists() and not list(out.rglob("progress.json"))  # content only
    run = json.loads((repo / "data" / ".runs" / "target_project.json").read_text())["summary"]
    assert 1 <= run["resumed_shards"] < run["shards"]  # the 3.0 run's finished shards, kept
    assert {read_manifest(d)["meta"]["projection"]["scale"] for d in out.iterdir() if d.is_dir()} == {3.0}


def test_kill_and_resume_gives_the_same_bytes(own_repo):
    """kill -9 synth_generate as it starts, after its first shard and at random points, then run it to
    the end: same keys, same shard bytes."""
    repo = own_repo
    import random

    out = repo / "data" / "synth_generate"
    reference = read_manifest(out)
    ref_keys = load_shards(out).keys
    rng = random.Random(0)
    kills = 0
    # the first kill lands as the work starts, the second once a shard is recorded, the others at
    # random points; one that comes after the run ended (a fast machine) kills nothing, and the next
    # starts the work again
    points = [{}, {"ready": lambda: _one_shard_recorded(repo, "synth_generate")}] + \
        [{"delay": rng.uniform(0.0, 1.5)} for _ in range(2)]
    for point in points:
        try:
            _start_and_kill(repo, "synth_generate", "data/.work/synth_generate-*/progress.json", **point)
            kills += 1
        except AssertionError:
            pass  # finished before the kill: nothing left to interrupt
    sh(repo, sys.executable, "-m", "tasks.synth_generate")
    got = read_manifest(out)
    assert [(s["name"], s["sha256"]) for s in got["shards"]] == [(s["name"], s["sha256"]) for s in reference["shards"]]
    keys = load_shards(out).keys
    assert keys == ref_keys and len(set(keys)) == len(keys) == 30
    assert kills >= 1


def test_prefect_flow_over_the_dvc_stages(repo, prefect_server):
    from flows.pipeline import pipeline

    pipeline(root=str(repo))  # brings the repo up to date (earlier tests ran stages outside DVC)
    result = pipeline(root=str(repo))
    forced = pipeline(root=str(repo), stages=["source_data"], force=True)["stages"][0]
    assert [r["stage"] for r in result["stages"]] == list(STAGES)
    assert not any(r["ran"] for r in result["stages"])  # everything cached by DVC
    assert not any("work" in r for r in result["stages"])  # no stage work to time
    assert set(result["metrics"]["mean"]) == set(MAIN_METHODS)
    assert result["metrics"]["warnings"]  # TINY's synthetic domain is weak: the flow's results say so
    # where a stage's time went: its work, its process start-up, DVC around it, Prefect around that
    assert forced["ran"] and forced["work"] > 0 and forced["start_up"] > 0 and forced["dvc"] > 0
    assert abs(forced["work"] + forced["start_up"] + forced["dvc"] - forced["seconds"]) < 0.5
