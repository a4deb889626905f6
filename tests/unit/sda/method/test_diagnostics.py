"""The label-free checks of the synthetic domain (sda.method.diagnostics). The warnings and the probe plan are
also tested with the stages that write them (tests/unit/tasks/test_classifier_align.py, test_diffusion_finetune.py)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sda.io.shards import Sample, write_shards
from sda.method.diagnostics import (class_accuracy, probe_plan, probe_score, projected_val_accuracy, synthetic_samples,
                                    weakest_classes)
from sda.models.classifiers import Classifier

NAMES = ["red", "green", "blue"]


def _colour_judge():
    """A classifier that names an image's brightest channel (its logits: the channels' means)."""
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    return Classifier(model, {"num_classes": 3, "mean": [0.0] * 3, "std": [1.0] * 3})


def _colours(classes):
    """uint8 (N, 4, 4, 3) images lit in the channel of each class."""
    x = np.zeros((len(classes), 4, 4, 3), np.uint8)
    x[np.arange(len(classes)), :, :, classes] = 255
    return x


def test_the_weakest_classes_are_the_k_least_recognised_in_class_order():
    per_class = {"a": 50.0, "b": 10.0, "c": 90.0, "d": 20.0}
    assert weakest_classes(per_class, ["a", "b", "c", "d", "unseen"], k=2) == [1, 3]
    assert weakest_classes(per_class, ["a", "b", "c", "d"], k=10) == [0, 1, 2, 3]


def test_class_accuracy_scores_each_label_and_names_a_class_without_a_name_by_its_index():
    judge = _colour_judge()
    labels = np.array([0, 0, 1, 1, 2, 2, 4])
    seen = np.array([0, 2, 1, 1, 2, 0, 0])  # what the images show
    batches = [SimpleNamespace(images=_colours(seen[:4]), labels=labels[:4]),
               SimpleNamespace(images=_colours(seen[4:]), labels=labels[4:])]
    score = class_accuracy(judge, batches, NAMES)
    assert score == {"accuracy": round(400 / 7, 2), "images": 7,
                     "per_class": {"red": 50.0, "green": 100.0, "blue": 50.0, "4": 0.0}}
    assert class_accuracy(judge, [], NAMES) == {"accuracy": 0.0, "images": 0, "per_class": {}}


def test_the_probe_scores_the_generators_samples_of_the_fixed_plan():
    asked = []

    def sample(labels, seeds):  # a generator that draws class 2 red: [-1, 1] (B, 3, H, W)
        asked.append((list(labels), list(seeds)))
        drawn = _colours(np.array([0 if c == 2 else c for c in labels]))
        return torch.from_numpy(drawn).permute(0, 3, 1, 2) / 127.5 - 1

    score = probe_score(sample, _colour_judge(), [0, 1, 2], NAMES, per_class=3, seed=5, batch_size=4)
    assert score["per_class"] == {"red": 100.0, "green": 100.0, "blue": 0.0} and score["images"] == 9
    assert [a for a, _ in asked] == [[0, 0, 0, 1], [1, 1, 2, 2], [2]]  # class-major, in batches of 4
    assert sum((s for _, s in asked), []) == probe_plan([0, 1, 2], 3, seed=5)[1]


def test_the_projected_val_accuracy_is_the_unrounded_top1_percent():
    assert projected_val_accuracy(_colour_judge(), _colours(np.array([0, 1, 2])), np.array([0, 1, 1])) == \
        pytest.approx(200 / 3, abs=1e-12)


def test_synthetic_samples_pair_the_first_images_of_each_class_with_their_aligned_versions(tmp_path):
    x = np.stack([np.full((4, 4, 3), i, np.uint8) for i in range(9)])
    labels = [i % 3 for i in range(9)]
    generated = [Sample(key=f"s{i}", image=x[i], label=labels[i]) for i in range(9)]
    aligned = [Sample(key=f"s{i}", image=x[i] + 100, label=labels[i]) for i in reversed(range(9)) if i != 5]
    for name, samples in (("generated", generated), ("aligned", aligned)):
        (tmp_path / name).mkdir()
        write_shards(samples, tmp_path / name, maxcount=4)
    pairs = synthetic_samples(tmp_path / "generated", tmp_path / "aligned", classes=[0, 2], per_class=2)
    # class 2's second image (s5) has no aligned version: the class is left out
    assert set(pairs) == {0}
    before, after = pairs[0]
    assert before[:, 0, 0, 0].tolist() == [0, 3] and after[:, 0, 0, 0].tolist() == [100, 103]
