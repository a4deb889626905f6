"""LAME (sda.method.baselines.lame): the Laplacian-regularised outputs over a feature graph of the batch."""

import torch
import torch.nn.functional as F

from sda.method.baselines.lame import Lame, LameParams, affinity, lame_outputs, laplacian_optimization
from tests.support.methods import images as _images, inputs


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


def test_without_edges_the_assignments_are_the_models_softmax():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert torch.allclose(laplacian_optimization(-p.log(), torch.zeros(2, 2)), p, atol=1e-6)
    y = laplacian_optimization(-p.log(), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert torch.allclose(y.sum(1), torch.ones(2)) and y[1, 0] > p[1, 0]  # the edge pulls row 1 towards row 0


def test_the_linear_affinity_is_the_gram_matrix_and_force_symmetry_averages_the_graph_with_its_transpose():
    torch.manual_seed(0)
    features, logits = F.normalize(torch.randn(7, 4), dim=1), torch.randn(7, 3)
    assert torch.allclose(affinity(features, "linear", 5), features @ features.t())
    knn = affinity(features, "knn", 2)
    assert not torch.equal(knn, knn.t())  # a kNN graph is not symmetric: the option matters
    unary = -torch.log(logits.softmax(1) + 1e-10)
    expected = torch.log(laplacian_optimization(unary, (knn + knn.t()) / 2).clamp_min(1e-30))
    assert torch.allclose(lame_outputs(logits, features, LameParams(affinity="knn", knn=2, force_symmetry=True)),
                          expected)


def test_a_small_batch_is_solved_with_the_images_before_it_until_a_reset(clf):
    x = _images(8)
    whole = inputs(x, clf)
    params = LameParams(affinity="knn", knn=3)
    expected = lame_outputs(whole.frozen["source_orig"], whole.frozen["source_orig_features"], params)
    lame = Lame(params, window=8)
    outs = [lame(inputs(x[i: i + 2], clf)) for i in range(0, 8, 2)]
    assert torch.allclose(outs[-1], expected[-2:], atol=1e-5) and lame.cost.forwards == 8
    lame.reset()
    alone = lame_outputs(whole.frozen["source_orig"][6:], whole.frozen["source_orig_features"][6:], params)
    assert torch.allclose(lame(inputs(x[6:], clf)), alone, atol=1e-5)
