"""Where images come from: a registry of domains, the way timm registers models.

A domain is one module of this package that builds a :class:`Domain` and passes it to
:func:`register_domain`; ``params.yaml``'s ``profile`` names it, and every stage looks it up with
:func:`get_domain` instead of branching on the profile. Registered here: ``embedded`` (the built-in
digits, :mod:`sda.domains.embedded`), ``imagenet`` (:mod:`sda.domains.imagenet`) and ``folder``
(your own labelled images, :mod:`sda.domains.folder`).

Adding a domain is adding a module that registers itself (and its import at the end of this file);
what a stage needs from it:

- ``description``: a few words for people (deployments, ``--help``);
- ``sections``: the params sections it reads (recorded with the source data);
- ``image_size(params)``: the side of the images the diffusion models see;
- ``write_source(params, out)``: the ``source_data`` stage's folder (shard sets ``train`` / ``val`` /
  ``test`` as the domain has them, ``classes.json`` with the class ``names``);
- ``write_targets(params, source_dir, out)``: the ``target_data`` stage's folder (one shard set per
  target domain, ``domains.json``);
- ``source_classifier(params)``: ``None`` to train ``source_model.arch`` on the source train split,
  or the :class:`PretrainedClassifier` to load;
- ``diffusion(params)``: ``"unet"`` (a class-conditional UNet trained on the source, also the
  projector) or ``"adm+dit"`` (a pretrained ADM projector and DiT generator, as the paper's);
- ``severities(params)``: the corruption severities its numbers are measured at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Sequence

if TYPE_CHECKING:
    from sda.config import Params

__all__ = ["Domain", "PretrainedClassifier", "domain_names", "get_domain", "register_domain"]


@dataclass(frozen=True)
class PretrainedClassifier:
    """Weights of ``source_model.arch`` to load as the source model, and the input preprocessing they
    expect: ``mean`` / ``std`` per channel on [0, 1] pixels, optional ``resize`` (shorter side,
    bicubic) then centre ``crop``, in pixels."""

    weights: str
    mean: Sequence[float]
    std: Sequence[float]
    resize: int | None = None
    crop: int | None = None


def _train_on_source(params: "Params") -> PretrainedClassifier | None:
    return None


def _unet(params: "Params") -> Literal["unet", "adm+dit"]:
    return "unet"


@dataclass(frozen=True)
class Domain:
    """What the stages need from a domain (see the module docstring)."""

    name: str
    description: str  # what the domain is, in a few words ("the built-in digits (CPU)")
    sections: tuple[str, ...]  # the params sections its source and targets read (besides target_data)
    image_size: Callable[["Params"], int]
    write_source: Callable[["Params", Path], dict[str, int]]
    write_targets: Callable[["Params", Path, Path], list[str]]
    severities: Callable[["Params"], list[int]]
    source_classifier: Callable[["Params"], PretrainedClassifier | None] = _train_on_source
    diffusion: Callable[["Params"], Literal["unet", "adm+dit"]] = _unet


_REGISTRY: dict[str, Domain] = {}


def register_domain(domain: Domain) -> Domain:
    """Add ``domain`` under its name; a second domain of the same name is an error."""
    if domain.name in _REGISTRY:
        raise ValueError(f"domain {domain.name!r} is registered twice")
    _REGISTRY[domain.name] = domain
    return domain


def domain_names() -> tuple[str, ...]:
    """The registered domains, in registration order."""
    return tuple(_REGISTRY)


def get_domain(name: str) -> Domain:
    """The domain registered as ``name`` (``params.profile``); unknown names list the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; the registered domains are {list(_REGISTRY)}") from None


# the domains: each module registers itself on import
from sda.domains import embedded  # noqa: E402, F401  (each registers itself; embedded is the default)
from sda.domains import imagenet  # noqa: E402, F401
from sda.domains import folder  # noqa: E402, F401
