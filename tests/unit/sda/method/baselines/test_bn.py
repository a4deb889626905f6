"""BN (sda.method.baselines.bn): the source model on the test batch's statistics."""

import torch

from sda.method.baselines.bn import BatchNormAdapter
from sda.models.classifiers import Classifier
from tests.support.methods import images as _images, inputs


def test_bn_uses_the_batch_statistics(clf):
    x = _images(32)
    bn = BatchNormAdapter(clf, window=0)
    adapted = bn(inputs(x, clf))
    frozen = clf.logits(x)
    assert not torch.allclose(adapted, frozen, atol=1e-3)
    # the batch's statistics: an image's logits depend on its batch mates
    assert not torch.allclose(bn(inputs(x[:16], clf))[:1], adapted[:1], atol=1e-4)
    assert bn.batch_norm_layers == 6 and bn.cost.forwards == 48


def test_bn_trains_nothing_and_a_model_without_batch_norm_is_the_source_model_saying_so(clf):
    bn = BatchNormAdapter(clf, window=0)
    assert bn.optimizer is None and not any(p.requires_grad for p in bn.model.parameters()) and bn.extra() == {}
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 10)).eval()
    plain = Classifier(model, clf.config)
    x = _images(8)
    layer_norm = BatchNormAdapter(plain, window=0)
    assert torch.allclose(layer_norm(inputs(x, plain)), plain.logits(x), atol=1e-6)
    assert layer_norm.extra() == {"batch_norm_layers": 0}
