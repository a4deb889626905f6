"""sda.models.training: endless seeded batches, and the epsilon-prediction loop (what the model is given,
what the loss is on, class dropout, checkpoints that see the EMA weights and can stop training)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sda.method.sampling import sample_class_conditional
from sda.models.training import lr_factor, random_batches, train_epsilon
from tests.support import colour_classes


class Recorder(torch.nn.Module):
    """A model of ``channels`` input channels that predicts zero noise (plus ``extra`` output channels of
    1000, as a learned-variance head) and records what each call is given."""

    def __init__(self, channels: int = 3, extra: int = 0):
        super().__init__()
        self.config = SimpleNamespace(in_channels=channels)
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.extra = extra
        self.calls: list[dict] = []

    def forward(self, x, t, class_labels=None):
        self.calls.append({"shape": tuple(x.shape), "t": t.clone(), "labels": class_labels, "training": self.training})
        eps = x * self.w
        head = torch.full((x.shape[0], self.extra, *x.shape[2:]), 1000.0)
        return SimpleNamespace(sample=torch.cat([eps, head], 1))


def _arrays(n: int = 10, side: int = 8):
    images = np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    return images, np.arange(n) % 3


# -- moved from tests/unit/sda/models/test_diffusion.py ------------------------------------------
def test_batches_that_run_out_are_an_error(tiny_unet, scheduler):
    batches = iter([(np.zeros((2, 16, 16, 3), np.uint8), np.zeros(2, np.int64))])
    with pytest.raises(ValueError, match="ran out after 1 of 3 steps"):
        train_epsilon(tiny_unet, scheduler, batches, steps=3, lr=1e-3, seed=0)


# -- moved from tests/unit/tasks/test_diffusion_finetune.py --------------------------------------
def _colour_batches(seed: int):
    x, y = colour_classes(64, 0)
    gen = torch.Generator().manual_seed(seed)
    return random_batches(x, y, 16, gen), gen


def _train(unet, scheduler, **kw):
    batches, gen = _colour_batches(0)
    return train_epsilon(unet, scheduler, batches, steps=12, lr=3e-3, seed=0, generator=gen, null_label=3,
                         null_label_prob=0.2, warmup_steps=2, ema_decay=0.9, **kw)


def test_checkpoints_see_the_ema_weights_and_leave_training_unchanged(tiny_unet, scheduler):
    plain = copy.deepcopy(tiny_unet)
    _train(plain, scheduler)
    seen: list[tuple[int, bool, torch.Tensor]] = []

    def callback(step, model):
        # a probe samples with its own generators (and runs the model) between training steps
        g = sample_class_conditional(model, scheduler, [0, 1], [1, 2], null_label=3, steps=3)
        seen.append((step, model.training, g))
        return False

    probed = copy.deepcopy(tiny_unet)
    losses = _train(probed, scheduler, checkpoint_every=5, on_checkpoint=callback)
    assert len(losses) == 12 and [s for s, *_ in seen] == [5, 10, 12]  # each interval, and the last step
    assert not any(training for _, training, _ in seen)
    for (k, a), b in zip(plain.state_dict().items(), probed.state_dict().values()):
        assert torch.equal(a, b), k  # bit-identical training with and without the probe
    # the last checkpoint saw the weights the model ends with (the EMA ones)
    final = sample_class_conditional(probed, scheduler, [0, 1], [1, 2], null_label=3, steps=3)
    assert torch.equal(seen[-1][2], final)


def test_a_checkpoint_can_stop_training(tiny_unet, scheduler):
    steps = []
    losses = _train(tiny_unet, scheduler, checkpoint_every=4, on_checkpoint=lambda s, m: steps.append(s) or s == 8)
    assert len(losses) == 8 and steps == [4, 8] and not tiny_unet.training


# -- new -----------------------------------------------------------------------------------------
def test_batches_are_drawn_with_replacement_by_the_generator_endlessly():
    images, labels = _arrays(5)
    batches = random_batches(images, labels, 4, torch.Generator().manual_seed(3))
    drawn = [next(batches) for _ in range(6)]  # 24 draws from 5 images: endless
    idx = torch.randint(0, 5, (4,), generator=torch.Generator().manual_seed(3))
    x, y = drawn[0]
    assert x.dtype == torch.uint8 and x.shape == (4, 8, 8, 3) and y.dtype == torch.long
    assert torch.equal(x, torch.as_tensor(images)[idx]) and y.tolist() == labels[idx.numpy()].tolist()
    again = random_batches(images, labels, 4, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[0], next(again)[0]) for a in drawn)


def test_the_model_sees_noised_images_at_timesteps_of_the_whole_schedule_in_training_mode(scheduler):
    model = Recorder()
    images, labels = _arrays()
    losses = train_epsilon(model, scheduler, random_batches(images, labels, 4, torch.Generator().manual_seed(0)),
                           steps=25, lr=1e-3, seed=0)
    assert len(losses) == 25 and not model.training
    assert all(c["shape"] == (4, 3, 8, 8) and c["training"] for c in model.calls)
    t = torch.cat([c["t"] for c in model.calls])
    assert t.min() >= 0 and t.max() < 1000 and t.max() - t.min() > 500
    same = random_batches(images, labels, 4, torch.Generator().manual_seed(0))
    assert all(torch.equal(c["labels"], next(same)[1]) for c in model.calls)  # no null label: as drawn


def test_the_loss_is_on_the_first_input_channels_only():
    """A learned-variance head's outputs (1000 here) do not enter the epsilon loss: a zero prediction
    of unit noise costs about 1."""
    from sda.models.schedulers import ddpm_scheduler

    images, labels = _arrays()
    losses = train_epsilon(Recorder(extra=3), ddpm_scheduler(learn_sigma=True),
                           random_batches(images, labels, 8, torch.Generator().manual_seed(0)), steps=5, lr=1e-9, seed=0)
    assert 0.5 < np.mean(losses) < 1.5


@pytest.mark.parametrize("prob, expected", [(0.0, "labels"), (1.0, "null")])
def test_class_dropout_replaces_labels_by_the_null_label_with_its_probability(scheduler, prob, expected):
    model = Recorder()
    images, labels = _arrays()
    batches = ((torch.as_tensor(images[:4]), torch.tensor([0, 1, 2, 0])) for _ in range(3))
    train_epsilon(model, scheduler, batches, steps=3, lr=1e-3, seed=0, null_label=9, null_label_prob=prob)
    want = [0, 1, 2, 0] if expected == "labels" else [9, 9, 9, 9]
    assert [c["labels"].tolist() for c in model.calls] == [want] * 3


def test_unlabelled_batches_train_an_unconditional_model_and_encode_maps_to_its_space(scheduler):
    model = Recorder(channels=4)
    images, _ = _arrays()
    batches = ((torch.as_tensor(images[:2]), None) for _ in range(2))
    encode = lambda x: torch.nn.functional.avg_pool2d(torch.cat([x, x[:, :1]], 1), 2)  # noqa: E731 - a 4-channel latent
    train_epsilon(model, scheduler, batches, steps=2, lr=1e-3, seed=0, encode=encode)
    assert [(c["shape"], c["labels"]) for c in model.calls] == [((2, 4, 4, 4), None)] * 2


class ConvEps(torch.nn.Module):
    """A one-convolution noise predictor: real weights that training changes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.config = SimpleNamespace(in_channels=3)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, t, class_labels=None):
        return SimpleNamespace(sample=self.conv(x))


def test_the_same_seed_trains_the_same_bytes_and_reports_each_step(scheduler):
    def run(seed):
        model = ConvEps()
        steps: list[tuple[int, float]] = []
        images, labels = _arrays()
        losses = train_epsilon(model, scheduler, random_batches(images, labels, 4, torch.Generator().manual_seed(1)),
                               steps=3, lr=1e-2, seed=seed, on_step=lambda s, loss: steps.append((s, loss)))
        return model, losses, steps

    a, losses, steps = run(0)
    b, _, _ = run(0)
    c, _, _ = run(1)
    assert steps == list(zip([1, 2, 3], losses))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


# -- the learning-rate schedule --------------------------------------------------------------------
def test_the_constant_schedule_ramps_up_then_holds_the_rate():
    f = lr_factor("constant", warmup_steps=4, steps=100)
    assert [f(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert f(99) == 1.0
    assert lr_factor("constant", warmup_steps=0, steps=100)(0) == 1.0  # no warm-up: the full rate at once


def test_the_cosine_schedule_falls_to_zero_at_the_last_step():
    f = lr_factor("cosine", warmup_steps=10, steps=1000)
    assert f(0) == pytest.approx(0.1, rel=1e-4)  # the warm-up ramp still applies
    assert f(500) == pytest.approx(0.5)
    assert f(999) < 1e-4 and f(2000) == 0.0  # steps past the budget (a probe's extension) stay at 0
    assert all(f(s) >= f(s + 1) for s in range(10, 999))


def test_an_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="lr_schedule 'step': use one of"):
        lr_factor("step", 0, 10)


def test_the_schedule_changes_training_and_constant_matches_no_schedule_argument(tiny_unet, scheduler):
    default, constant, cosine = (copy.deepcopy(tiny_unet) for _ in range(3))
    _train(default, scheduler)
    _train(constant, scheduler, lr_schedule="constant")
    _train(cosine, scheduler, lr_schedule="cosine")
    pairs = list(zip(default.state_dict().values(), constant.state_dict().values(), cosine.state_dict().values()))
    assert all(torch.equal(a, b) for a, b, _ in pairs)
    assert not all(torch.equal(a, c) for a, _, c in pairs)
