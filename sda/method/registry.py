"""The test-time method registry: every method the ``streams`` stage compares (and the relabel service
and the guard build) is one module that registers a :class:`StreamMethod`, the way domains register
themselves (:mod:`sda.domains.registry`).

A method is built from a :class:`MethodContext` into an *adapter*:

    adapter.reset()                          # back to the source state (a stream's reset)
    adapter(batch: StreamInputs) -> logits   # float32 (B, C) on the CPU, one per image of the batch
    adapter.cost                             # ClassifierCost: classifier passes made, per image row
    adapter.unet_forward_equivalents         # UNet forward-equivalents per image (0 for most)
    adapter.extra() -> dict                  # what the table reports besides accuracy (resets, decisions...)

Every method sees the same :class:`StreamInputs`: the batch's originals and projections and the frozen
models' outputs on them, computed once for the whole target set (:func:`frozen_outputs`), so no method
repeats a forward another already made. A method whose label of an image depends on that image alone
(``per_image``: source, DDA, SDA, DiffPure, MEMO) is run once over the images and read by every stream.

Where methods live: input adaptation in :mod:`sda.method.input_methods`, the model-adaptation
baselines in the package :mod:`sda.method.baselines` (one module each; every module there is
imported, so adding a baseline is adding its module), SDA's combinations in :mod:`sda.method.guarded`;
:mod:`sda.method.catalog` imports them all: look methods up through it.
A method's settings are its own params section, ``streams.<section>`` in ``params.yaml``
(:class:`StreamMethod.params_model`), validated wherever the registry is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch

from sda.config import Section, Streams, register_method_section
from sda.models.classifiers import Classifier

__all__ = ["MethodContext", "StreamInputs", "StreamMethod", "build_method", "get_method", "method_names",
           "register_method", "resolve_methods"]

# the frozen outputs every method may read (StreamInputs.frozen): logits (N, C) and penultimate features (N, D)
FROZEN_KEYS = ("source_orig", "source_proj", "aligned_proj", "source_orig_features", "aligned_proj_features")


@dataclass(frozen=True)
class StreamInputs:
    """One batch of a stream: ``originals`` / ``projections`` uint8 (B, H, W, 3), ``keys`` (B,), and the
    frozen models' outputs on them (``frozen[k]`` for ``k`` in ``FROZEN_KEYS``: the source model's logits
    on the originals and on the projections, the aligned model's on the projections, float32 (B, C); the
    penultimate features of the source model on the originals and of the aligned model on the
    projections, float32 (B, D))."""

    originals: np.ndarray
    projections: np.ndarray
    keys: list[str]
    frozen: Mapping[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.originals)


class Adapter(Protocol):
    cost: Any
    unet_forward_equivalents: float

    def reset(self) -> None: ...

    def __call__(self, batch: StreamInputs) -> torch.Tensor: ...

    def extra(self) -> dict[str, Any]: ...


@dataclass
class MethodContext:
    """What a method is built from. ``params``: its own section (validated), None if it has none;
    ``window``: below this many images a batch is seen with the images before it (0: never);
    ``batch_size``: the stream's; ``source_split(split)``: the source data's ``split`` as (uint8 images,
    labels) (EATA's Fisher information), read on demand; ``diffusion``: (unet, scheduler, null label,
    respacing) for DiffPure, None where it is not loaded; ``projection_fe``: ``target_project``'s UNet
    forward-equivalents per image; ``guard_window``: the images the guard of SDA's combinations looks back
    over (None: ``streams.window`` or 64)."""

    source: Classifier
    aligned: Classifier
    streams: Streams
    params: Section | None
    device: torch.device
    seed: int
    num_classes: int
    window: int = 0
    batch_size: int = 64
    fallback: bool = False
    projection_fe: float = 0.0
    guard_window: int | None = None
    diffusion: tuple | None = None
    source_split: Callable[[str], tuple[np.ndarray, np.ndarray]] | None = None


@dataclass(frozen=True)
class StreamMethod:
    """A registered method. ``build(ctx) -> adapter`` (module docstring); ``per_image``: an image's label
    depends on that image alone (computed once, read by every stream); ``params_model``: its params
    section ``streams.<section>`` (``section`` defaults to the name; methods may share one, as
    ``sda+tent`` reads ``tent``); ``images_per_domain(params)``: run on a seeded subset of each domain
    (the first of the stage's per-domain draw), None for all; ``needs_diffusion``: DiffPure's UNet;
    ``kind``: the table's grouping (``KINDS``: input / model / output / combined)."""

    name: str
    description: str
    build: Callable[[MethodContext], Adapter]
    kind: str = "model"
    per_image: bool = False
    params_model: type[Section] | None = None
    section: str | None = None
    images_per_domain: Callable[[Section | None], int | None] | None = None
    needs_diffusion: bool = False
    reference: str = ""

    @property
    def section_name(self) -> str | None:
        return self.section or (self.name if self.params_model is not None else None)


_METHODS: dict[str, StreamMethod] = {}


def register_method(method: StreamMethod) -> StreamMethod:
    """Add ``method`` to the registry (once per name) and its params section to ``streams``'; a refused
    method (a taken name, a section another method declares differently, an unknown kind) leaves both as
    they were."""
    if method.name in _METHODS and _METHODS[method.name] is not method:
        raise ValueError(f"a stream method named {method.name!r} is already registered")
    if method.kind not in KINDS:
        raise ValueError(f"stream method {method.name!r}: kind {method.kind!r} is none of {', '.join(KINDS)}")
    if method.params_model is not None:
        register_method_section(method.section_name, method.params_model)
    _METHODS[method.name] = method
    return method


KINDS = ("input", "model", "output", "combined")  # the table's groups, in its order


def _ordered() -> list[str]:
    return sorted(_METHODS, key=lambda m: KINDS.index(_METHODS[m].kind))  # stable: registration order within a kind


def method_names() -> tuple[str, ...]:
    """Every registered method: input adaptation, model adaptation, output adaptation, SDA's combinations,
    each group in registration order."""
    return tuple(_ordered())


def get_method(name: str) -> StreamMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"streams.methods: unknown method {name!r}; registered: {', '.join(_METHODS)}") from None


def resolve_methods(cfg: Streams) -> list[StreamMethod]:
    """The methods ``streams.methods`` names (``all``: every registered one), checked against the registry,
    once every ``streams.<section>`` of theirs is (:meth:`sda.config.Streams.check_method_sections`)."""
    cfg.check_method_sections()
    names = _ordered() if cfg.methods == "all" else list(cfg.methods)
    unknown = [m for m in names if m not in _METHODS]
    if unknown:
        raise ValueError(f"streams.methods: unknown {unknown}; registered: {', '.join(_METHODS)} (or `all`)")
    return [_METHODS[m] for m in names]


def build_method(name: str, ctx: MethodContext) -> Adapter:
    """The adapter of method ``name``, its own params section read from ``ctx.streams``."""
    method = get_method(name)
    section = method.section_name
    params = ctx.streams.method_params(section) if section else None
    return method.build(MethodContext(**{**ctx.__dict__, "params": params}))
