"""CoTTA (sda.method.baselines.cotta): a mean teacher, augmentation averaging when the anchor is unsure,
stochastic restore."""

import torch

from sda.method.baselines.bn import BatchNormAdapter
from sda.method.baselines.cotta import Cotta, CottaParams
from sda.method.catalog import build_method
from sda.models.classifiers import Classifier, create_classifier
from tests.support.methods import images as _images, inputs, method_context as _ctx


def test_cotta_augments_when_the_anchor_is_unsure_and_restores(clf):
    cotta = build_method("cotta", _ctx(clf))
    out = cotta(inputs(_images(16), clf))
    assert cotta.augmented == 1  # 10 classes, a random model: the anchor's confidence is under 0.92
    assert cotta.cost.forwards == 16 * 34 and out.shape == (16, 10)


def test_the_confidence_threshold_scales_with_the_classes(clf):
    assert Cotta(clf, params=CottaParams(), window=0, seed=0).ap == 0.92  # the library's CIFAR-10 value
    torch.manual_seed(0)
    wide = Classifier(create_classifier("sda_cnn3", 101, width=8).eval(), {**clf.config, "num_classes": 101})
    assert Cotta(wide, params=CottaParams(), window=0, seed=0).ap == 0.1  # its ImageNet value
    assert Cotta(wide, params=CottaParams(ap=0.5), window=0, seed=0).ap == 0.5


def test_a_sure_anchor_lets_the_teacher_predict_on_the_batch_itself(clf):
    x = inputs(_images(16), clf)
    cotta = Cotta(clf, params=CottaParams(ap=1e-6), window=0, seed=0)
    out = cotta(x)
    assert cotta.augmented == 0 and cotta.cost.forwards == 16 * 3  # student, anchor, teacher
    assert torch.allclose(out, BatchNormAdapter(clf, window=0)(x), atol=1e-5)  # the teacher before its update


def test_restoring_every_weight_puts_the_student_back_while_the_teacher_keeps_its_update(clf):
    cotta = Cotta(clf, params=CottaParams(ap=1e-6, lr=1.0, restore=1.0, teacher_momentum=0.5), window=0, seed=0)
    source = {k: v.clone() for k, v in cotta.model.state_dict().items()}
    cotta(inputs(_images(16), clf))
    student = dict(cotta.model.named_parameters())
    assert all(torch.equal(p, source[k]) for k, p in student.items())
    assert any(not torch.equal(p, source[k]) for k, p in cotta.teacher.named_parameters())
