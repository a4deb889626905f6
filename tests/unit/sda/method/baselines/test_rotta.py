"""RoTTA (sda.method.baselines.rotta): robust BatchNorm, a category-balanced memory, a timeliness-weighted teacher."""

import torch

from sda.method.baselines.rotta import CategoryBalancedMemory, RobustBatchNorm, Rotta, RottaParams
from tests.support.methods import images as _images, inputs


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


def test_robust_batch_norm_starts_at_the_source_statistics_and_moves_by_alpha_towards_each_batchs():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -1.0, 0.0]))
        bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.0]))
        bn.weight.copy_(torch.tensor([1.5, 1.0, 0.5]))
    robust = RobustBatchNorm(bn, alpha=0.25).eval()
    x = torch.randn(4, 3, 5, 5) * 3 + 2
    assert torch.allclose(robust(x), bn(x), atol=1e-5)  # eval: the source statistics as they are
    robust.train()
    robust(x)
    var, mean = torch.var_mean(x, dim=[0, 2, 3], unbiased=False)
    assert torch.allclose(robust.source_mean, 0.75 * bn.running_mean + 0.25 * mean)
    assert torch.allclose(robust.source_var, 0.75 * bn.running_var + 0.25 * var)
