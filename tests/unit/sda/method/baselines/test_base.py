"""What the model-adaptation baselines share (sda.method.baselines.base): the window, the lone-image rule, the
reset, and the update rules' helpers."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from sda.method.baselines.base import (ClassifierCost, Window, ema_update, entropy, norm_affine_parameters,
                                       reference_sgd, symmetric_cross_entropy, use_test_batch_statistics)
from sda.method.baselines.bn import BatchNormAdapter
from sda.method.baselines.tent import Tent, TentParams
from sda.models.classifiers import Classifier, to_model_input
from tests.support.methods import images as _images, inputs


def test_a_sliding_window_at_batch_one(clf):
    x = _images(12)
    bn = BatchNormAdapter(clf, window=8)
    out = torch.cat([bn(inputs(x[i: i + 1], clf)) for i in range(12)])
    full = BatchNormAdapter(clf, window=0)
    # the 12th image was seen with the 7 before it: the same as a batch of those 8
    assert torch.allclose(out[11], full(inputs(x[4:12], clf))[-1], atol=1e-5)
    # the first one alone has no batch statistics: the source model's prediction
    assert torch.allclose(out[0], clf.logits(x[:1])[0], atol=1e-5)
    assert torch.allclose(out[1], full(inputs(x[:2], clf))[-1], atol=1e-5)
    bn.reset()
    assert torch.allclose(bn(inputs(x[11:12], clf))[0], clf.logits(x[11:12])[0], atol=1e-5)  # reset empties the window


@pytest.mark.parametrize("method", ["bn", "tent", "sar", "eata", "roid", "rotta", "cotta"])
def test_a_lone_image_through_a_batchnorm_after_global_pooling(method):
    """A BatchNorm on (1, C) features cannot normalise one image: the source model's prediction, no step."""
    from sda.config import Streams
    from sda.method.catalog import MethodContext, build_method

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 10)).eval()
    clf = Classifier(model, {"num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3})
    x = _images(3)
    ctx = MethodContext(source=clf, aligned=clf, streams=Streams(), params=None, device=torch.device("cpu"), seed=0,
                        num_classes=10, window=8, source_split=lambda split: (_images(8), np.zeros(8, dtype=np.int64)))
    adapter = build_method(method, ctx)
    assert torch.allclose(adapter(inputs(x[:1], clf))[0], clf.logits(x[:1])[0], atol=1e-6)
    assert adapter(inputs(x[1:2], clf)).shape == (1, 10)  # two images in the window: batch statistics again


def test_the_window_holds_the_last_size_rows_and_turns_over_every_size_rows():
    window = Window(4)
    turns = []
    for i in range(9):
        rows, mine = window(torch.tensor([float(i)]))
        turns.append(window.full_turn)
        assert window.sliding and rows[mine].tolist() == [float(i)]
    assert rows.tolist() == [5.0, 6.0, 7.0, 8.0]
    assert turns == [False, False, False, True, False, False, False, True, False]
    whole, mine = window(torch.arange(4.0))
    assert not window.sliding and whole.tolist() == [0.0, 1.0, 2.0, 3.0] and mine == slice(0, 4)
    window.reset()
    assert window(torch.tensor([9.0]))[0].tolist() == [9.0]


def test_entropy_is_log_c_for_a_uniform_row_and_zero_for_a_certain_one():
    assert torch.allclose(entropy(torch.zeros(2, 4)), torch.full((2,), float(np.log(4))))
    assert entropy(torch.tensor([[100.0, 0.0, 0.0]]))[0] < 1e-6


def test_symmetric_cross_entropy_weighs_each_direction_by_alpha():
    torch.manual_seed(0)
    x, y = torch.randn(5, 3), torch.randn(5, 3)
    towards_y = -(y.softmax(1) * x.log_softmax(1)).sum(1)  # CE of x's prediction to y's
    towards_x = -(x.softmax(1) * y.log_softmax(1)).sum(1)
    assert torch.allclose(symmetric_cross_entropy(x, y, alpha=0.0), towards_y)
    assert torch.allclose(symmetric_cross_entropy(x, y, alpha=1.0), towards_x)
    assert torch.allclose(symmetric_cross_entropy(x, y), (towards_x + towards_y) / 2)


def test_test_batch_statistics_replace_the_running_ones(clf):
    model = clf.module
    n = use_test_batch_statistics(model)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert n == len(bns) == 6 and not model.training
    assert all(m.running_mean is None and m.running_var is None for m in bns)
    batch = to_model_input(_images(4), **clf.preprocessing)
    with torch.no_grad():  # an image's logits depend on its batch mates
        assert not torch.allclose(model(batch)[:1], model(batch[:2])[:1], atol=1e-4)


def test_only_the_norm_layers_affine_parameters_train_but_those_skipped():
    model = nn.Sequential(OrderedDict([("conv", nn.Conv2d(3, 4, 3)), ("bn", nn.BatchNorm2d(4)),
                                       ("top", nn.GroupNorm(2, 4)), ("ln", nn.LayerNorm(4))]))
    params = norm_affine_parameters(model, skip=("top",))
    assert [id(p) for p in params] == [id(p) for p in (model.bn.weight, model.bn.bias, model.ln.weight, model.ln.bias)]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"bn.weight", "bn.bias", "ln.weight", "ln.bias"}
    with pytest.raises(ValueError, match="nothing to adapt"):
        norm_affine_parameters(nn.Sequential(nn.Linear(2, 2)))


def test_the_reference_sgd_is_nesterov_without_weight_decay_and_plain_without_momentum():
    p = [nn.Parameter(torch.zeros(2))]
    d = reference_sgd(p, 0.1).defaults
    assert (d["lr"], d["momentum"], d["nesterov"], d["dampening"], d["weight_decay"]) == (0.1, 0.9, True, 0.0, 0.0)
    assert not reference_sgd(p, 0.1, momentum=0.0).defaults["nesterov"]  # Nesterov needs momentum


def test_ema_update_moves_the_training_parameters_only_and_never_the_buffers():
    target, source = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            t.fill_(1.0)
            s.fill_(0.0)
        target.running_mean.fill_(5.0)
    target.bias.requires_grad_(False)
    ema_update(target, source, 0.9)
    assert torch.allclose(target.weight, torch.full((2,), 0.9)) and torch.equal(target.bias, torch.ones(2))
    ema_update(target, source, 0.5, update_all=True)
    assert torch.allclose(target.bias, torch.full((2,), 0.5)) and torch.equal(target.running_mean, torch.full((2,), 5.0))
    ema_update(target, source, 1.0, update_all=True)
    assert torch.allclose(target.bias, torch.full((2,), 0.5))


def test_the_cost_is_counted_per_image_and_adds_up():
    cost = ClassifierCost(10, 4)
    cost.add(ClassifierCost(2, 2))
    assert cost.per_image(4) == {"classifier_forwards": 3.0, "classifier_backwards": 1.5}
    assert ClassifierCost(3, 0).per_image(0)["classifier_forwards"] == 3.0  # no image: per one


def test_a_reset_restores_the_model_and_empties_the_optimizer(clf):
    tent = Tent(clf, params=TentParams(lr=0.1), window=0)
    source = {k: v.clone() for k, v in tent.model.state_dict().items()}
    x = inputs(_images(16), clf)
    tent(x), tent(x)
    assert tent.optimizer.state and any(not torch.equal(v, source[k]) for k, v in tent.model.state_dict().items())
    tent.reset()
    assert not tent.optimizer.state and all(torch.equal(v, source[k]) for k, v in tent.model.state_dict().items())


def test_unit_range_and_normalise_undo_each_other(clf):
    bn = BatchNormAdapter(clf, window=0)
    x = _images(2)
    unit = bn.unit_range(bn.model_input(x))
    assert torch.allclose(unit, torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255, atol=1e-6)
    assert torch.allclose(bn.normalise(unit), bn.model_input(x), atol=1e-6)
