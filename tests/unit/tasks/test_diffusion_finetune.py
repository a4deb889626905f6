"""diffusion_finetune's probe: checkpoints scored by the source model on a fixed seeded probe set,
the best one kept, training extended past train_steps while the score is under its target (the
training bytes unchanged by the probing itself: tests/unit/sda/models/test_training.py)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from tests.support import colour_classes
from sda.config import DiffusionFinetune, ParamsError, parse_params
from sda.io.shards import Sample, write_shards
from sda.method.diagnostics import alignment_warnings, probe_plan, probe_score
from sda.method.sampling import sample_class_conditional
from sda.models.classifiers import create_classifier, load_classifier, save_classifier, train_classifier
from sda.models.diffusion import load_diffusion
from tasks.diffusion_finetune import run

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
TINY_UNET = {"block_out_channels": (8, 16), "attention_levels": (False, True), "norm_num_groups": 4,
             "batch_size": 16, "lr": 3e-3, "ema_decay": 0.9}


def test_probe_plan_is_fixed_and_class_major():
    labels, seeds = probe_plan([0, 1, 2], 2, seed=7)
    assert labels == [0, 0, 1, 1, 2, 2] and len(set(seeds)) == 6
    assert probe_plan([0, 1, 2], 2, seed=7) == (labels, seeds) and probe_plan([0, 1, 2], 2, seed=8)[1] != seeds


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A source_data folder (train shards of three colour classes, classes.json) and a source model
    that knows the colours, as the stages write them."""
    root = tmp_path_factory.mktemp("probe")
    x, y = colour_classes(96, 0)
    (root / "source_data" / "train").mkdir(parents=True)
    write_shards((Sample(key=f"s-{i:04d}", image=im, label=int(c)) for i, (im, c) in enumerate(zip(x, y))),
                 root / "source_data" / "train", maxcount=64)
    (root / "source_data" / "classes.json").write_text(json.dumps({"names": ["red", "green", "blue"]}))
    torch.manual_seed(0)
    judge = create_classifier("sda_cnn3", 3, width=8)
    train_classifier(judge, x, y, mean=MEAN, std=STD, epochs=4, batch_size=32, lr=3e-3, weight_decay=0.0, seed=0)
    save_classifier(judge, root / "source_model", {"arch": "sda_cnn3", "num_classes": 3, "kwargs": {"width": 8},
                                                   "mean": list(MEAN), "std": list(STD)})
    return root


def _rescore(model_dir, judge_dir, probe_seed_of, per_class):
    """The saved model's probe score, computed afresh."""
    unet, sched, info = load_diffusion(model_dir)
    judge = load_classifier(judge_dir)
    return probe_score(lambda y, s: sample_class_conditional(unet, sched, y, s, null_label=info.null_label, steps=3),
                       judge, [0, 1, 2], ["red", "green", "blue"], per_class=per_class, seed=probe_seed_of)


@pytest.mark.slow
@pytest.mark.parametrize("target", [0.0, 100.0])
def test_the_probe_keeps_the_best_checkpoint_and_extends_training_until_its_target(source, tmp_path, target, caplog):
    from sda.runtime import derive_seed

    cfg = DiffusionFinetune(train_steps=6, probe_every=3, probe_per_class=2, probe_target=target,
                            max_train_steps=12, **TINY_UNET)
    with caplog.at_level(logging.INFO, logger="sda"):
        info = run(cfg, 0, source / "source_data", tmp_path / "m", torch.device("cpu"),
                   judge_dir=source / "source_model", sample_steps=3)
    probe = info.probe
    steps = [h["step"] for h in probe["history"]]
    if target == 0.0:  # reached at train_steps: training stops there, as without the probe
        assert info.trained_steps == 6 and steps == [3, 6] and probe["reached_target"]
    else:
        best = max(h["accuracy"] for h in probe["history"])
        assert best < 100 and not probe["reached_target"]  # the tiny model cannot draw every colour
        assert info.trained_steps == 12 and steps == [3, 6, 9, 12]
        assert "Raise diffusion_finetune.max_train_steps (now 12)" in caplog.text
    best = max(probe["history"], key=lambda h: (h["accuracy"], h["step"]))
    assert probe["selected_step"] == best["step"] and probe["accuracy"] == best["accuracy"]
    # what was saved is the checkpoint that scored best: scoring it again gives its score
    seed = derive_seed(0, "diffusion_finetune", "probe")
    assert _rescore(tmp_path / "m", source / "source_model", seed, 2)["accuracy"] == probe["accuracy"]
    assert json.loads((tmp_path / "m" / "info.json").read_text())["probe"]["selected_step"] == best["step"]


def test_probe_off_trains_train_steps_and_records_no_probe(source, tmp_path):
    info = run(DiffusionFinetune(train_steps=4, **TINY_UNET), 0, source / "source_data", tmp_path / "m",
               torch.device("cpu"))
    assert info.trained_steps == 4 and info.probe is None


def test_a_budget_below_train_steps_is_a_params_error():
    with pytest.raises(ParamsError, match="max_train_steps .* is below train_steps"):
        parse_params({"diffusion_finetune": {"train_steps": 100, "max_train_steps": 50}})


def test_an_unlearnt_generator_is_a_warning_naming_the_budget():
    probe = {"accuracy": 31.0, "images": 24, "target": 80.0, "reached_target": False, "trained_steps": 1600,
             "selected_step": 1400}
    settings = {"generator": "g", "projector": "diffusion_finetune.max_train_steps (now 1600)", "projection": "p",
                "alignment": "a"}
    (w,) = alignment_warnings({"diffusion_probe": probe}, min_synthetic_accuracy=50, max_val_drop=10, settings=settings)
    assert w.startswith("diffusion_finetune: after 1600 steps") and "31.0%" in w
    assert w.endswith("Raise diffusion_finetune.max_train_steps (now 1600)")
    assert alignment_warnings({"diffusion_probe": {**probe, "reached_target": True}}, min_synthetic_accuracy=50,
                              max_val_drop=10, settings=settings) == []
    assert np.isfinite(probe["accuracy"])
