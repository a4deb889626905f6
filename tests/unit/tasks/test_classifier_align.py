"""The checks of the synthetic domain (sda.method.diagnostics) and classifier_align's guard: the
epoch best on the projected source val split is kept, an alignment worse than the source model
there falls back to DDA, and the paper's path (select_epoch: false) trains and saves as before."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.support import colour_classes as _colours
from sda.config import ClassifierAlign
from sda.io.shards import Sample, write_shards
from sda.io.streaming import ShardStream
from sda.method.diagnostics import alignment_warnings, class_accuracy
from sda.method.scoring import fell_back, method_predictions
from sda.models.classifiers import create_classifier, load_classifier, save_classifier, train_classifier
from tasks.classifier_align import mixed_batches, run

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
SUGGESTED_SETTINGS = {"generator": "diffusion_finetune.train_steps (now 100) or synth_generate.per_class (now 3)",
          "projector": "diffusion_finetune.train_steps (now 100)", "projection": "projection.N (now 4)",
          "alignment": "classifier_align.lr (now 0.0005)"}


def _shards(path, images, labels):
    path.mkdir(parents=True)
    write_shards((Sample(key=f"s-{i:05d}", image=im, label=int(y)) for i, (im, y) in enumerate(zip(images, labels))),
                 path, maxcount=64)
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A source model that knows the colours (saved as source_model would), and its val split."""
    root = tmp_path_factory.mktemp("guard")
    x, y = _colours(240, 0)
    torch.manual_seed(0)
    model = create_classifier("sda_cnn3", 3, width=8)
    train_classifier(model, x, y, mean=MEAN, std=STD, epochs=4, batch_size=32, lr=3e-3, weight_decay=0.0, seed=0)
    save_classifier(model, root / "source_model", {"arch": "sda_cnn3", "num_classes": 3, "kwargs": {"width": 8},
                                                   "mean": list(MEAN), "std": list(STD)})
    return root, _colours(90, 1)


def test_class_accuracy_scores_each_intended_class(source, tmp_path):
    root, (vx, vy) = source
    model = load_classifier(root / "source_model")
    wrong = vy.copy()
    wrong[vy == 2] = 0  # class 2's images "generated for" class 0: none of them is recognised as that
    stream = ShardStream(_shards(tmp_path / "set", vx, wrong), 32)
    score = class_accuracy(model, stream, ["red", "green", "blue"])
    assert score["images"] == 90
    assert score["per_class"]["green"] == 100.0 and set(score["per_class"]) == {"red", "green"}
    n_blue = int((vy == 2).sum())
    assert score["accuracy"] == pytest.approx(100 * (90 - n_blue) / 90, abs=0.01)
    assert score["per_class"]["red"] == pytest.approx(100 * (vy == 0).sum() / ((vy == 0).sum() + n_blue), abs=0.01)


def test_warnings_name_the_weak_stage_and_the_setting():
    good = {"accuracy": 91.0, "images": 30, "per_class": {"a": 90.0, "b": 92.0}}
    weak = {"accuracy": 12.0, "images": 30, "per_class": {"a": 5.0, "b": 19.0}}
    ok = {"synthetic": {"synth_generate": good, "synth_align": good},
          "projected_val": {"source_original": 95.0, "source": 80.0, "aligned": 79.0}, "fallback": False}
    kw = dict(min_synthetic_accuracy=50.0, max_val_drop=2.0, settings=SUGGESTED_SETTINGS)
    assert alignment_warnings(ok, **kw) == []
    gen = alignment_warnings({**ok, "synthetic": {"synth_generate": weak, "synth_align": weak}}, **kw)
    assert len(gen) == 1 and gen[0].startswith("synth_generate:") and "diffusion_finetune.train_steps" in gen[0]
    assert "a: 5%" in gen[0]  # the weakest class is named
    proj = alignment_warnings({**ok, "synthetic": {"synth_generate": good, "synth_align": weak}}, **kw)
    assert len(proj) == 1 and proj[0].startswith("synth_align:") and "projection.N" in proj[0]
    worse = {**ok, "projected_val": {"source_original": 95.0, "source": 80.0, "aligned": 70.0}}
    (w,) = alignment_warnings({**worse, "fallback": True}, **kw)
    assert w.startswith("classifier_align:") and "falls back to DDA" in w and "classifier_align.lr" in w
    (w,) = alignment_warnings(worse, **kw)
    assert "classifier_align.fallback is off" in w
    lossy = {**ok, "projected_val": {"source_original": 95.0, "source": 20.0, "aligned": 21.0}}
    (w,) = alignment_warnings(lossy, **kw)
    assert w.startswith("projection:") and "95.0% of the originals" in w and "diffusion_finetune.train_steps" in w


def test_a_fallback_makes_sda_decide_as_dda():
    torch.manual_seed(0)
    so, sp = torch.randn(50, 4), torch.randn(50, 4)
    normal = method_predictions(so, sp, sp)
    fb = method_predictions(so, sp, sp, fallback=True)  # the "aligned" model is the source model
    assert torch.equal(fb["sda"], fb["dda"]) and not torch.equal(normal["sda"], normal["dda"])
    assert fell_back({"fallback": "dda"}) and not fell_back({})


def _align(root, synth, tmp_path, projected_val, projected_source=None, **cfg):
    c = ClassifierAlign(**{"epochs": 4, "batch_size": 32, "lr": 3e-3, "shuffle_buffer": 100, "max_val_drop": 2.0,
                           "select_epoch": True, **cfg})
    return run(c, 0, root / "source_model", synth, tmp_path / "aligned", torch.device("cpu"),
               projected_val=projected_val, projected_source=projected_source)


def test_a_useless_synthetic_set_falls_back_to_the_source_model(source, tmp_path):
    root, val = source
    rng = np.random.default_rng(3)  # noise images with random labels: fine-tuning on them destroys the classifier
    synth = _shards(tmp_path / "synth", rng.integers(0, 256, (128, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, 128))
    cfg = _align(root, synth, tmp_path, val, lr=2e-2)
    assert cfg["val_aligned"] < cfg["val_source"] - 2.0
    assert cfg["fallback"] == "dda" and 1 <= cfg["selected_epoch"] <= 4
    saved_clf = load_classifier(tmp_path / "aligned")
    saved, saved_cfg = saved_clf.module, saved_clf.config
    src = load_classifier(root / "source_model").module
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in saved.state_dict().items())
    assert fell_back(saved_cfg)
    assert [h["epoch"] for h in saved_cfg["history"]] == [1, 2, 3, 4] and all("val" in h for h in saved_cfg["history"])


def test_a_useful_synthetic_set_keeps_its_best_epoch(source, tmp_path):
    root, val = source
    synth = _shards(tmp_path / "synth", *_colours(128, 4))  # the source's own kind of images
    cfg = _align(root, synth, tmp_path, val)
    assert "fallback" not in cfg
    vals = [h["val"] for h in cfg["history"]]
    best = max(range(4), key=lambda i: (vals[i], i))
    assert cfg["selected_epoch"] == best + 1 and cfg["val_aligned"] == pytest.approx(vals[best], abs=0.01)
    assert cfg["val_aligned"] >= cfg["val_source"] - 2.0


def test_selection_changes_which_epoch_is_kept_not_how_the_epochs_train(source, tmp_path):
    """select_epoch: false is the paper's path: the last epoch kept (each still scored on the projected
    val split, for the curve); the epochs themselves train to the same losses and scores with the guard on."""
    root, val = source
    synth = _shards(tmp_path / "synth", *_colours(128, 4))
    on = _align(root, synth, tmp_path / "on", val)
    off = _align(root, synth, tmp_path / "off", val, select_epoch=False)
    assert [h["loss"] for h in on["history"]] == [h["loss"] for h in off["history"]]
    assert [h["val"] for h in on["history"]] == [h["val"] for h in off["history"]]
    assert "selected_epoch" not in off and "fallback" not in off
    saved = json.loads((tmp_path / "off" / "aligned" / "config.json").read_text())
    assert set(saved) == {"arch", "num_classes", "kwargs", "mean", "std", "aligned_on", "hyperparameters", "history",
                          "seed", "trained_images"}
    if on["selected_epoch"] == 4:  # the last epoch kept: the same weights as without the guard
        a = load_classifier(tmp_path / "on" / "aligned").module
        b = load_classifier(tmp_path / "off" / "aligned").module
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_the_last_epoch_kept_by_default_still_falls_back_when_it_is_worse(source, tmp_path):
    """select_epoch: false (the default, the paper's last epoch) with fallback on: a useless set still
    makes SDA decide as DDA; with fallback off the worse model is kept (and the warning says so)."""
    root, val = source
    rng = np.random.default_rng(3)
    synth = _shards(tmp_path / "synth", rng.integers(0, 256, (128, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, 128))
    last = _align(root, synth, tmp_path / "last", val, lr=2e-2, select_epoch=False)
    assert last["fallback"] == "dda" and "selected_epoch" not in last
    assert last["val_aligned"] == round(last["history"][-1]["val"], 2)  # no selection: the last epoch measured
    kept = _align(root, synth, tmp_path / "kept", val, lr=2e-2, select_epoch=False, fallback=False)
    assert "fallback" not in kept and kept["val_aligned"] == last["val_aligned"]


def test_mixed_batches_take_every_image_once_in_a_seeded_order(source, tmp_path):
    x, y = _colours(100, 5)
    stream = ShardStream(_shards(tmp_path / "synth", *_colours(70, 6)), 32, seed=0)
    mem_x = np.full((45, 16, 16, 3), 7, np.uint8)
    mem_y = np.arange(45) % 3
    runs = [list(mixed_batches(stream, mem_x, mem_y, 32, seed=s)) for s in (1, 1, 2)]
    sizes = [len(b[1]) for b in runs[0]]
    assert len(runs[0]) == len(stream) + 2 and sum(sizes) == 70 + 45
    assert [len(b[1]) for b in runs[1]] == sizes  # the same seed, the same order
    assert any(len(a[1]) != len(b[1]) or not np.array_equal(a[1], b[1]) for a, b in zip(runs[0], runs[2]))
    from_memory = np.concatenate([b[1] for b in runs[0] if (b[0] == 7).all()])
    assert sorted(from_memory.tolist()) == sorted(mem_y.tolist())


def test_projected_source_images_rescue_a_useless_synthetic_set(source, tmp_path):
    """classifier_align.projected_source: the same noise set with the source's own kind of images
    (standing in for their projections) beside it keeps the aligned model near the source model."""
    root, val = source
    rng = np.random.default_rng(3)
    synth = _shards(tmp_path / "synth", rng.integers(0, 256, (128, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, 128))
    alone = _align(root, synth, tmp_path / "a", val, lr=2e-2, select_epoch=False, fallback=False)
    mixed = _align(root, synth, tmp_path / "b", val, projected_source=_colours(256, 7), lr=2e-2, select_epoch=False,
                   fallback=False)
    assert mixed["trained_images"] == (128 + 256) * 4
    assert mixed["val_aligned"] > alone["val_aligned"] + 10, (alone["val_aligned"], mixed["val_aligned"])
