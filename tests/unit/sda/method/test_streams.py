"""Stream protocols: every image once, resets where the protocol says, seeded, and as correlated as named."""

import numpy as np
import pytest

from sda.method.guarded import effective_classes
from sda.method.streams import dirichlet_order, label_runs, stream_batches

SIZES = {"a": 200, "b": 200, "c": 200}
LABELS = np.tile(np.repeat(np.arange(10), 20), 3)


def _flat(batches):
    return np.concatenate([b.indices for b in batches])


@pytest.mark.parametrize("order,delta", [("iid", None), ("continual", None), ("mixed", None),
                                         ("correlated", 0.1), ("correlated", 0.0)])
@pytest.mark.parametrize("batch_size", [64, 4, 1])
def test_every_image_exactly_once(order, delta, batch_size):
    b = stream_batches(SIZES, LABELS, order=order, batch_size=batch_size, seed=0, name="s", delta=delta)
    assert sorted(_flat(b).tolist()) == list(range(600))
    assert all(1 <= len(x.indices) <= batch_size for x in b)


def test_resets_and_domain_boundaries():
    dom = np.repeat(np.arange(3), 200)
    iid = stream_batches(SIZES, LABELS, order="iid", batch_size=64, seed=0, name="s")
    # reset at each domain, batches never straddle one, domains one after another
    assert sum(b.reset for b in iid) == 3
    assert all(len(set(dom[b.indices])) == 1 for b in iid)
    assert [dom[b.indices[0]] for b in iid if b.reset] == [0, 1, 2]
    cont = stream_batches(SIZES, LABELS, order="continual", batch_size=64, seed=0, name="s")
    assert [b.reset for b in cont] == [True] + [False] * (len(cont) - 1)
    mixed = stream_batches(SIZES, LABELS, order="mixed", batch_size=64, seed=0, name="s")
    assert np.mean([len(set(dom[b.indices])) for b in mixed]) > 2.5  # batches mix the domains


def test_orders_are_seeded_by_seed_and_name_only():
    a = _flat(stream_batches(SIZES, LABELS, order="mixed", batch_size=8, seed=3, name="x"))
    assert np.array_equal(a, _flat(stream_batches(SIZES, LABELS, order="mixed", batch_size=8, seed=3, name="x")))
    assert not np.array_equal(a, _flat(stream_batches(SIZES, LABELS, order="mixed", batch_size=8, seed=3, name="y")))
    assert not np.array_equal(a, _flat(stream_batches(SIZES, LABELS, order="mixed", batch_size=8, seed=4, name="x")))


def test_dirichlet_concentration_orders_from_iid_to_class_sorted():
    labels = np.repeat(np.arange(10), 54)
    runs = {d: label_runs(labels[dirichlet_order(labels, d, np.random.default_rng(0))]) for d in (100.0, 0.1, 0.0)}
    assert runs[100.0] < runs[0.1] < runs[0.0] == 54  # class-sorted: each class one run

    def classes_per_batch(delta):
        b = stream_batches({"a": 540}, labels, order="correlated", batch_size=64, seed=0, name="c", delta=delta)
        return np.mean([effective_classes(labels[x.indices]) for x in b])

    assert classes_per_batch(100.0) > 7 and classes_per_batch(0.1) < 4  # an i.i.d. batch of 64 holds ~9


def test_bad_streams_are_named():
    with pytest.raises(ValueError, match="delta"):
        stream_batches(SIZES, LABELS, order="correlated", batch_size=4, seed=0, name="s")
    with pytest.raises(ValueError, match="batch_size"):
        stream_batches(SIZES, LABELS, order="iid", batch_size=0, seed=0, name="s")
