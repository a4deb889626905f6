import copy
import subprocess
import sys

import numpy as np
import torch

from sda.config import Projection
from sda.method.dda import project
from sda.method.sampling import sample_class_conditional
from sda.models.training import random_batches, train_epsilon
from sda.runtime import derive_seed, set_deterministic


def _work(unet, scheduler) -> list[torch.Tensor]:
    """The three kinds of work the stages do: sampling, the DDA projection, training steps."""
    sample = sample_class_conditional(unet, scheduler, [0, 1, 2, 3], [1, 2, 3, 4], null_label=3, steps=6)
    proj = project(unet, scheduler, sample, Projection(respacing=20, N=4, D=4, scale=24.0),
                   class_labels=torch.full((4,), 3), generator=torch.Generator().manual_seed(0))
    images = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    trained, gen = copy.deepcopy(unet), torch.Generator().manual_seed(0)
    train_epsilon(trained, scheduler, random_batches(images, np.arange(16) % 3, 8, gen), steps=3, lr=1e-3, seed=0,
                  generator=gen, null_label=3, null_label_prob=0.2, warmup_steps=1, ema_decay=0.9)
    return [sample, proj, *[p.detach().clone() for p in trained.parameters()]]


def test_deterministic_mode_skips_the_nan_fill_and_keeps_the_bytes(tiny_unet, scheduler, restore_determinism):
    """set_deterministic turns off torch's NaN fill of new tensors (4-6 % of the CPU time, more under load);
    nothing the stages compute reads uninitialised memory, so the bytes are those of the fill."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    filled = _work(tiny_unet, scheduler)
    set_deterministic(True)
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    assert not torch.utils.deterministic.fill_uninitialized_memory
    fast = _work(tiny_unet, scheduler)
    assert len(fast) == len(filled) > 2
    for a, b in zip(filled, fast):
        assert torch.equal(a, b)
    set_deterministic(False)  # runtime.deterministic: false lets cuDNN benchmark its algorithms
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "diffusion_finetune") == derive_seed(0, "diffusion_finetune")
    assert len({derive_seed(0, "a"), derive_seed(1, "a"), derive_seed(0, "b"), derive_seed(0, "a", 1)}) == 4
    assert 0 <= derive_seed(123, "x") < 2**31


def test_deterministic_mode_leaves_inductor_unloaded_until_a_model_is_compiled():
    """set_deterministic does what torch.use_deterministic_algorithms(on, warn_only=True) does without
    importing inductor's config (~1.5 s of every stage's start); fast_model sets inductor's flag before
    it compiles, so a compiled projection is as deterministic as with torch's call."""
    code = """
import sys, torch
from sda.runtime import set_deterministic
set_deterministic(True)
state = [torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
         "torch._inductor.config" in sys.modules]
from sda.accel import fast_model
fast_model(torch.nn.Linear(2, 2), compile="default")  # wraps; compiles at the first call only
import torch._inductor.config as inductor
state.append(inductor.deterministic)
set_deterministic(False)
state += [torch.are_deterministic_algorithms_enabled(), inductor.deterministic]
print(state)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert out.split() == ["[True,", "True,", "False,", "True,", "False,", "False]"], out
