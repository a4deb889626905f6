"""Tent (sda.method.baselines.tent): one entropy step per batch on the norm layers' affine parameters."""

import torch

from sda.method.baselines.base import entropy
from sda.method.baselines.tent import Tent, TentParams
from tests.support.methods import images as _images, inputs


def test_tent_updates_only_the_norm_affine_parameters_with_nesterov_and_resets(clf):
    tent = Tent(clf, params=TentParams(lr=0.1), window=0)
    assert tent.optimizer.defaults["nesterov"] and tent.optimizer.defaults["momentum"] == 0.9  # the reference's SGD
    before = {k: v.clone() for k, v in tent.model.named_parameters()}
    x = inputs(_images(32), clf)
    first = tent(x)
    second = tent(x)
    assert not torch.allclose(first, second)  # it learnt from the first batch
    changed = {k for k, v in tent.model.named_parameters() if not torch.equal(v, before[k])}
    bn_names = {f"{n}.{p}" for n, m in tent.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
                for p in ("weight", "bias")}
    assert changed and changed <= bn_names
    tent.reset()
    assert torch.allclose(tent(x), first)
    assert tent.cost.backwards == 96


def test_a_tent_step_lowers_the_batchs_entropy(clf):
    tent = Tent(clf, params=TentParams(lr=0.01, momentum=0.0, nesterov=False), window=0)
    x = inputs(_images(32), clf)
    first = tent(x)
    assert entropy(tent(x)).mean() < entropy(first).mean()
