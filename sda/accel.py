"""The GPU fast mode of the diffusion models: precision, memory layout, ``torch.compile`` (with CUDA
graphs), a batch size chosen from free GPU memory, out-of-memory errors that name the parameter,
and host-to-device prefetching of the next batch.

The fp32 eager path is the default everywhere and is the one with reference parity; every switch
here is opt-in through params (``projection.precision`` / ``channels_last`` / ``compile`` /
``batch_size: auto``, ``synth_generate.precision``). Reduced precision applies on CUDA only: on
the CPU the models always run fp32 (bf16 autocast there is slower on our cores and changes bytes).
"""

from __future__ import annotations

import contextlib
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TypeVar, get_args

import torch

from sda.config import CompileMode, Precision

__all__ = [
    "COMPILE_MODES",
    "PRECISIONS",
    "Precision",
    "ChannelsLastGroupNorm",
    "autocast",
    "auto_batch_size",
    "channels_last_group_norm",
    "fast_model",
    "layout_group_norms",
    "name_oom",
    "prefetch",
]

log = logging.getLogger("sda.accel")

PRECISIONS: tuple[str, ...] = get_args(Precision)
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)  # reduce-overhead: CUDA graphs, one per batch shape
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

T = TypeVar("T")


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``precision`` on CUDA; a no-op for fp32 or on the CPU."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=_DTYPES[precision])


def channels_last_group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                             bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """``F.group_norm`` whose output has ``x``'s memory layout, computed without a layout copy.

    The stock group norm flattens each group to ``(B, G, C/G * H * W)`` (the eager CUDA kernel and
    inductor's decomposition alike), which a channels-last tensor cannot view, so it copies to NCHW.
    Here the statistics reduce over ``(C/G, *spatial)`` of the ``(B, G, C/G, *spatial)`` view, which
    splits the channel dimension only and is a view for any layout, and the affine is one
    ``addcmul`` with per-(sample, channel) scale and shift, whose output takes ``x``'s layout.
    ``x``: ``(B, C, *spatial)``, ``C`` divisible by ``num_groups``. Statistics in fp32; under autocast
    the output is fp32 (as autocast makes ``group_norm``'s), otherwise ``x``'s dtype.
    """
    b, c, g = x.shape[0], x.shape[1], num_groups
    per_channel = (b, c) + (1,) * (x.dim() - 2)
    xg = x.unflatten(1, (g, c // g))
    var, mean = torch.var_mean(xg.float(), dim=tuple(range(2, xg.dim())), correction=0)  # (B, G)
    scale = torch.rsqrt(var + eps)[:, :, None].expand(b, g, c // g)
    if weight is not None:
        scale = scale * weight.float().view(g, c // g)
    shift = -mean[:, :, None] * scale  # x * scale + shift = (x - mean) * rstd * weight + bias
    if bias is not None:
        shift = shift + bias.float().view(g, c // g)
    out = torch.addcmul(shift.reshape(per_channel), x, scale.reshape(per_channel))
    return out if torch.is_autocast_enabled(x.device.type) else out.to(x.dtype)


class ChannelsLastGroupNorm(torch.nn.GroupNorm):
    """``nn.GroupNorm`` that keeps a channels-last input channels-last: same parameters, same values.

    A channels-last UNet with stock norms copies every norm's input to NCHW and the next
    convolution copies it back (cuDNN's Hopper kernels are NHWC-only): on an H200 (ADM-256, bf16 +
    compile) those copies were ~20 % of the guided step's device time. Channels-last inputs (channel
    stride 1) on CUDA or under ``torch.compile`` go through :func:`channels_last_group_norm`; the
    rest use the stock kernel, NCHW inputs and eager CPU ones (the CPU kernel handles channels-last
    itself, and is faster there: measured on the 2-core dev machine, tiny ADM eager, 0.88 vs 0.56
    images/s).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() < 3 or x.stride(1) != 1 or x.is_contiguous()
                or (x.device.type == "cpu" and not torch.compiler.is_compiling())):
            return super().forward(x)
        return channels_last_group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def layout_group_norms(model: torch.nn.Module, keep_layout: bool = True) -> int:
    """Make every ``nn.GroupNorm`` of ``model`` a :class:`ChannelsLastGroupNorm` (``keep_layout``) or a
    stock one again, in place (class swap: parameters and state dict unchanged). Returns how many."""
    cls = ChannelsLastGroupNorm if keep_layout else torch.nn.GroupNorm
    norms = [m for m in model.modules() if type(m) in (torch.nn.GroupNorm, ChannelsLastGroupNorm)]
    for m in norms:
        m.__class__ = cls
    return len(norms)


def fast_model(model: torch.nn.Module, *, channels_last: bool = False, compile: str = "none",
               layout_norms: bool = True) -> torch.nn.Module:
    """The projection model to call: ``model`` with its parameters frozen (in place), converted to
    channels_last (in place; with ``layout_norms`` its GroupNorms become
    :class:`ChannelsLastGroupNorm`, so no layout copy happens between convolutions) when asked, and
    wrapped by ``torch.compile(mode=compile)`` when asked.

    Frozen because the guided step differentiates with respect to the input only: a compiled
    backward computes the gradient of every parameter that requires one (AOTAutograd cannot prune
    at run time; its convolution backwards then also compute weight and bias gradients, which
    autograd.grad throws away), and eager autograd keeps each convolution's input for a weight
    gradient. The input gradient, hence the projection, is the same either way.

    Compiled wrappers are cached per (model, mode, norms), so the compilation (tens of seconds for ADM-256)
    is paid once per process; a new batch shape triggers one recompile with a dynamic batch
    dimension (``reduce-overhead`` records one CUDA graph per shape instead). The forward and the
    input-gradient backward of the guided step both run compiled (AOTAutograd).
    """
    if compile not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got {compile!r}")
    model.requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        layout_group_norms(model, layout_norms)
    if compile == "none":
        return model
    # kept on the model itself (a plain dict attribute, not a submodule): freed with the model.
    # Keyed by the norms too: a compiled graph holds the norm implementation it traced.
    cache = model.__dict__.setdefault("_sda_compiled", {})
    key = (compile, channels_last and layout_norms)
    if key not in cache:
        log.info("torch.compile(%s, mode=%s): the first batch of each shape compiles", type(model).__name__, compile)
        import torch._inductor.config as inductor  # what torch.use_deterministic_algorithms sets (sda.runtime)

        inductor.deterministic = torch.are_deterministic_algorithms_enabled()
        cache[key] = torch.compile(model, mode=compile)
    return cache[key]


def name_oom(param: str, batch_size: int, what: str) -> contextlib.AbstractContextManager:
    """Turn ``torch.OutOfMemoryError`` into a ``ValueError`` that names ``param`` and what to do."""

    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        try:
            yield
        except torch.OutOfMemoryError as err:
            free = ""
            if torch.cuda.is_available():
                f, total = torch.cuda.mem_get_info()
                free = f" ({f / 2**30:.1f} of {total / 2**30:.1f} GiB free now)"
            first = str(err).splitlines()[0] if str(err) else "out of memory"
            raise ValueError(f"CUDA out of memory {what} a batch of {batch_size}{free}: lower {param} "
                             f"(or set it to 'auto' to size it from free GPU memory). torch said: {first}") from None

    return guard()


def auto_batch_size(step: Callable[[int], Any], device: torch.device | str, *, cpu_default: int = 32,
                    max_batch: int = 256, headroom: float = 0.85) -> int:
    """The largest power of two batch that ``step(batch)`` fits in ``headroom`` of the free GPU memory.

    ``step(b)`` runs the work once for a batch of ``b`` (one guided projection step, say). Peak
    memory is measured at batches 1 and 2; the per-image slope and the fixed part give the
    estimate, which is rounded down to a power of two and capped at ``max_batch``. On the CPU the
    answer is ``cpu_default`` (memory is not what limits a CPU run).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return cpu_default
    peaks = []
    for b in (1, 2):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(b)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    per_image = max(peaks[1] - peaks[0], 1)
    fixed = max(peaks[0] - per_image, 0)
    free, _ = torch.cuda.mem_get_info(device)
    fit = int((free * headroom - fixed) // per_image)
    b = 2 ** int(math.log2(max(1, min(fit, max_batch))))
    log.info("batch_size auto: %.0f MiB per image, %.1f GiB free -> batch %d", per_image / 2**20, free / 2**30, b)
    return b


def prefetch(items: Iterable[T], prepare: Callable[[T], Any], device: torch.device | str) -> Iterator[tuple[T, Any]]:
    """``(item, prepare(item))`` for each item, with the next item prepared in a background thread
    while the caller works on the current one.

    ``prepare`` returns a CPU tensor (decoding, stacking); on CUDA it is pinned and copied with
    ``non_blocking=True`` so the copy overlaps the running kernels. Order is preserved.
    """
    device = torch.device(device)

    def load(item: T) -> Any:
        x = prepare(item)
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True)
        return x.to(device)

    it = iter(items)
    end = object()

    def produce() -> Any:  # reading the next item (decoding) happens in the background thread too
        item = next(it, end)
        return end if item is end else (item, load(item))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sda-prefetch") as pool:
        fut = pool.submit(produce)
        while (got := fut.result()) is not end:
            fut = pool.submit(produce)
            yield got
