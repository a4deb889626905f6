"""EATA, CoTTA, RoTTA, LAME, ROID and SDA's combinations with LAME, on a tiny random CNN: each update rule
does what its reference does, and the registry builds every method from its params section."""

import numpy as np
import pytest
import torch

from sda.config import ParamsError, Streams
from sda.method.baselines.eata import Eata, EataParams
from sda.method.baselines.lame import LameParams, affinity, lame_outputs
from sda.method.baselines.roid import prior_correction
from sda.method.baselines.rotta import CategoryBalancedMemory, Rotta, RottaParams
from sda.method.catalog import MethodContext, build_method, method_names, resolve_methods
from sda.models.classifiers import Classifier, create_classifier
from tests.unit.sda.method.test_model_adaptation import _images, inputs


@pytest.fixture
def clf():
    torch.manual_seed(0)
    model = create_classifier("sda_cnn3", 10, width=8).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return Classifier(model, {"num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3})


def _ctx(clf, **kw):
    return MethodContext(source=clf, aligned=clf, streams=Streams(), params=None, device=torch.device("cpu"), seed=0,
                         num_classes=10, source_split=lambda split: (_images(40, seed=9), np.zeros(40, dtype=np.int64)),
                         **kw)


def test_every_registered_method_runs_resets_and_counts_its_passes(clf):
    names = method_names()
    assert {"bn", "tent", "sar", "eata", "cotta", "rotta", "lame", "roid", "sda+lame", "sda+bn+lame"} <= set(names)
    assert names[:4] == ("source", "dda", "dda_ens", "sda")  # input adaptation first, combinations last
    x = inputs(_images(48), clf, projections=_images(48, seed=1))
    for name in names:
        if name == "diffpure":  # needs a diffusion model: tests/unit/sda/method/test_model_adaptation.py
            continue
        adapter = build_method(name, _ctx(clf))
        first = adapter(x)
        assert first.shape == (48, 10) and torch.isfinite(first).all(), name
        adapter.reset()
        assert adapter.cost.forwards >= 48, name
        assert isinstance(adapter.extra(), dict)


def test_methods_are_checked_against_the_registry_and_sections_by_their_models():
    assert [m.name for m in resolve_methods(Streams(methods=("sda", "lame")))] == ["sda", "lame"]
    with pytest.raises(ValueError, match="unknown.*'lam'.*registered"):
        resolve_methods(Streams(methods=("sda", "lam")))
    with pytest.raises(Exception, match="lame.affinity"):
        Streams.model_validate({"lame": {"affinity": "cosine"}})
    with pytest.raises(Exception, match="ead"):
        Streams.model_validate({"ead": {}})  # a typo'd method section is unknown
    assert Streams().method_params("cotta").augmentations == 32


def test_eata_keeps_reliable_unredundant_images_and_anchors_on_the_fisher(clf):
    source = _images(40, seed=9)
    eata = Eata(clf, params=EataParams(lr=0.5, margin=1.0, d_margin=0.999), window=0, source_images=source, batch_size=16)
    assert set(eata.fishers) and all(f[0].shape == f[1].shape for f in eata.fishers.values())
    before = [p.clone() for p in eata.params]
    eata(inputs(_images(32), clf))
    assert eata.steps == 1 and eata.selected == 32  # every image reliable (margin ln C), none redundant yet
    assert any(not torch.equal(a, b) for a, b in zip(before, eata.params))
    # a second batch: images whose softmax is like the running mean are redundant
    strict = Eata(clf, params=EataParams(lr=0.5, margin=1.0, d_margin=1e-6, fisher_alpha=0.0), window=0)
    strict(inputs(_images(32), clf))
    strict(inputs(_images(32, seed=2), clf))
    assert strict.steps == 1 and strict.fishers is None  # the second batch was all redundant: no step
    nothing = Eata(clf, params=EataParams(margin=1e-6, fisher_alpha=0.0), window=0)
    nothing(inputs(_images(32), clf))
    assert nothing.steps == 0 and nothing.cost.backwards == 0


def test_lame_pulls_an_image_to_its_neighbours_class():
    torch.manual_seed(0)
    features = torch.cat([torch.randn(1, 8) + 5, torch.randn(6, 8) * 0.01 + 5, torch.randn(6, 8) - 5])
    logits = torch.zeros(13, 3)
    logits[1:7, 0] = 4.0  # the first cluster says class 0
    logits[7:, 1] = 4.0
    logits[0, 2] = 0.5  # image 0 leans to class 2 alone, but sits in the first cluster
    out = lame_outputs(logits, features, LameParams(affinity="knn", knn=5))
    assert out.argmax(1)[0] == 0 and (out.argmax(1)[7:] == 1).all()
    k = affinity(torch.nn.functional.normalize(features, dim=1), "knn", 3)
    assert (k.sum(1) == 3).all() and (k.diagonal() == 0).all()
    rbf = affinity(torch.nn.functional.normalize(features, dim=1), "rbf", 3)
    assert torch.allclose(rbf, rbf.t()) and (rbf.diagonal() == 1).all()


def test_roid_prior_correction_multiplies_the_logits_by_the_smoothed_batch_prior():
    logits = torch.tensor([[2.0, 1.0, 0.0], [2.0, 0.5, 0.0], [0.1, 1.0, 0.0]])
    prior = logits.softmax(1).mean(0)
    smooth = max(1 / 3, 1 / 3) / prior.max()
    assert torch.allclose(prior_correction(logits), logits * (prior + smooth) / (1 + 3 * smooth))


def test_rotta_memory_is_category_balanced_and_drops_the_oldest_least_certain():
    mem = CategoryBalancedMemory(capacity=4, classes=2, lambda_t=1.0, lambda_u=1.0)
    for i in range(3):
        mem.add(torch.full((1,), float(i)), 0, uncertainty=0.1)
    assert [float(d) for d, _, _ in mem.items[0]] == [1.0, 2.0]  # a class's share is 2: its oldest gave way
    for i in (9, 10, 11):
        mem.add(torch.full((1,), float(i)), 1, uncertainty=0.1)
    assert [float(d) for d, _, _ in mem.items[1]] == [10.0, 11.0] and len(mem.items[0]) == 2
    mem.add(torch.full((1,), 12.0), 0, uncertainty=5.0)  # less certain than every stored image of its class
    assert [float(d) for d, _, _ in mem.items[0]] == [1.0, 2.0]
    data, ages = mem.contents()
    assert len(data) == 4 and ages == [a / 4 for a in (6, 5, 3, 2)]


def test_rotta_predicts_with_the_teacher_and_updates_every_memory_size_images(clf):
    rotta = Rotta(clf, params=RottaParams(lr=0.01, memory_size=16, update_every=16), window=0, seed=0)
    x = inputs(_images(32), clf)
    with torch.no_grad():
        teacher_first = rotta.teacher(rotta.model_input(x.originals))
    out = rotta(x)
    assert torch.allclose(out, teacher_first, atol=1e-5)  # the teacher's prediction, before the batch updates it
    # category-balanced: a class keeps at most ceil(16 / 10) images, however many the batch predicts of it
    assert rotta.updates == 2 and 0 < sum(len(c) for c in rotta.memory.items) <= 16
    assert max(len(c) for c in rotta.memory.items) <= 2
    rotta.reset()
    assert rotta.updates == 2 and sum(len(c) for c in rotta.memory.items) == 0  # updates: over the stream
    assert torch.allclose(rotta(x), out, atol=1e-5)


def test_cotta_augments_when_the_anchor_is_unsure_and_restores(clf):
    cotta = build_method("cotta", _ctx(clf))
    out = cotta(inputs(_images(16), clf))
    assert cotta.augmented == 1  # 10 classes, a random model: the anchor's confidence is under 0.92
    assert cotta.cost.forwards == 16 * 34 and out.shape == (16, 10)


def test_sda_lame_and_the_guard_that_chooses_it(clf):
    x = inputs(_images(64), clf, projections=_images(64, seed=1))
    sda_lame = build_method("sda+lame", _ctx(clf))
    out = sda_lame(x)
    sda = x.frozen["source_orig"] + x.frozen["aligned_proj"]
    features = torch.nn.functional.normalize(x.frozen["source_orig_features"], dim=1)  # the default graph's
    assert torch.allclose(out, lame_outputs(sda, features, LameParams(affinity="knn", knn=5)))
    # one class everywhere: concentrated, so the guard hands the batch to sda+lame instead of frozen SDA
    combo = build_method("sda+bn+lame", _ctx(clf))
    combo(x)
    assert combo.decisions.get("concentrated", 0) + combo.decisions.get("too_few", 0) + \
        combo.decisions.get("adapted", 0) + combo.decisions.get("mixed", 0) + combo.decisions.get("less_sure", 0) == 64


def test_a_params_section_error_names_the_key(clf):
    cfg = Streams.model_validate({"lame": {"knn": 3}})
    assert cfg.method_params("lame").knn == 3
    with pytest.raises((ParamsError, ValueError), match="knn"):
        Streams.model_validate({"lame": {"knn": 0}})


def test_eata_without_source_images_runs_as_eta_and_says_so(clf, tmp_path, caplog):
    """ImageNet's source data has no train split unless imagenet.train_dir is set: no Fisher, a warning."""
    from sda.method.catalog import read_source_split

    ctx = _ctx(clf)
    ctx.source_split = read_source_split(tmp_path / "source_data")
    with caplog.at_level("WARNING", logger="sda.streams"):
        eata = build_method("eata", ctx)
    assert eata.fishers is None and eata.extra()["fisher_images"] == 0
    assert "runs as ETA" in caplog.text and "fisher_split" in caplog.text
    assert eata(inputs(_images(16), clf)).shape == (16, 10)


def test_the_streams_stage_refuses_a_method_section_no_method_declares(tmp_path):
    """The stage reads its params before the methods register: a typo'd section is still one line, exit 2."""
    import subprocess
    import sys

    import yaml

    from tests.support import ROOT, subprocess_env

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["streams"]["lamee"] = {"knn": 3}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-m", "tasks.streams", "--params", str(tmp_path / "params.yaml")], cwd=ROOT,
                       env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "streams.lamee: unknown parameter" in r.stderr and "Traceback" not in r.stderr, r.stderr
