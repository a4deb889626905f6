"""The domain registry: :class:`Domain` (what the stages need from a domain), :func:`register_domain`,
and the lookups (:func:`domain_for`, :func:`get_domain`); :func:`set_profile` switches params.yaml's
profile. The package ``sda.domains`` re-exports these and imports every domain module, each of which
registers itself here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import yaml

from sda.config import Params, ParamsError, Section, parse_params, register_section, require_profile_entry
from sda.io.atomic import atomic_write_bytes

__all__ = ["Domain", "PretrainedClassifier", "PretrainedDiffusion", "domain_for", "domain_names", "get_domain", "register_domain",
           "set_profile"]


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


@dataclass(frozen=True)
class PretrainedDiffusion:
    """The pretrained diffusion models a domain starts from: the unconditional ADM projector and the
    DiT-XL/2 generator that its params ``section`` names (``adm_checkpoint``, ``adm_flags``, ``dit``,
    ``finetune_steps`` / ``finetune_lr`` / ``finetune_batch_size``), fine-tuned on the source train
    images for ``finetune_steps`` (0: used as they are).

    ``new_class_table``: the DiT gets a new class table for the source's classes (else it draws the
    ImageNet classes ``classes.json`` selects with its own). ``image_size``: the side in pixels the
    projector works at and the samples are brought to, the DiT fine-tuned at its own size on the images
    resized up to it (``None``: the checkpoints' own sizes, which the images have)."""

    section: str
    new_class_table: bool = False
    image_size: int | None = None


def _no_pretrained_classifier(params: Params) -> PretrainedClassifier | None:
    return None


def _no_pretrained_diffusion(params: Params) -> PretrainedDiffusion | None:
    return None


def _no_check(params: Params) -> None:
    return None


@dataclass(frozen=True)
class Domain:
    """What the stages need from a domain (see the module docstring)."""

    name: str
    description: str  # what the domain is, in a few words ("the built-in digits (CPU)")
    sections: tuple[str, ...]  # the params sections its source and targets read (besides target_data)
    image_size: Callable[[Params], int]
    write_source: Callable[[Params, Path], dict[str, int]]
    write_targets: Callable[[Params, Path, Path], list[str]]
    severities: Callable[[Params], list[int]]
    source_classifier: Callable[[Params], PretrainedClassifier | None] = _no_pretrained_classifier
    pretrained_diffusion: Callable[[Params], PretrainedDiffusion | None] = _no_pretrained_diffusion
    check: Callable[[Params], None] = _no_check
    # what ``check`` does, and that the files and folders the source and targets are read from are there
    # (without reading them): source_data and target_data ask it before they import their models
    check_inputs: Callable[[Params], None] = _no_check
    params_model: type[Section] | None = None  # its own params section, top-level ``<name>:`` in params.yaml


_REGISTRY: dict[str, Domain] = {}


def register_domain(domain: Domain) -> Domain:
    """Add ``domain`` under its name; a second domain of the same name is an error."""
    if domain.name in _REGISTRY:
        raise ValueError(f"domain {domain.name!r} is registered twice")
    if domain.params_model is not None:
        register_section(domain.name, domain.params_model)
    _REGISTRY[domain.name] = domain
    return domain


def domain_names() -> tuple[str, ...]:
    """The registered domains, in registration order."""
    return tuple(_REGISTRY)


def get_domain(name: str) -> Domain:
    """The domain registered as ``name``; an unknown name is a :class:`ParamsError` listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ParamsError(f"profile: unknown profile {name!r}; the registered domains are {list(_REGISTRY)}") from None


def domain_for(params: Params, *, inputs: bool = False) -> Domain:
    """The domain ``params.profile`` names, once it has checked the params (``Domain.check``; with
    ``inputs``, ``Domain.check_inputs``: the stages that read the domain's files).

    Raises :class:`ParamsError` naming the key: a domain's section its model refuses (every registered
    domain's, not only the profile's), an unknown ``profile`` or ``profiles.<name>``, or what the domain
    needs and the params lack (e.g. ``folder.source_dir``)."""
    params.check_domain_sections()
    for name in params.profiles:
        if name not in _REGISTRY:
            raise ParamsError(f"profiles.{name}: unknown profile {name!r}; the registered domains are {list(_REGISTRY)}")
    domain = get_domain(params.profile)
    try:
        (domain.check_inputs if inputs else domain.check)(params)
    except ValueError as err:
        raise ParamsError(f"profile {params.profile}: {err}") from None
    return domain


def set_profile(params_file: Path, profile: str, *, write: bool = True) -> bool:
    """Set ``profile:`` in ``params_file`` (comments kept, written atomically); True if it changed.
    ``write=False`` only validates the switched file (its shape and the domain's checks).

    The switch is a visible edit of params.yaml, so DVC sees it and re-runs what depends on it.
    """
    text = params_file.read_text()
    pattern = re.compile(r"^profile:[ \t]*([^\s#]+)", re.MULTILINE)
    m = pattern.search(text)
    if m is None:
        raise ParamsError(f"{params_file}: no top-level 'profile:' line to switch")
    if m.group(1) == profile:
        return False
    new = pattern.sub(f"profile: {profile}", text, count=1)
    raw = yaml.safe_load(new)
    domain_for(parse_params(raw, source=str(params_file)))  # validate before writing
    require_profile_entry(raw, source=str(params_file))
    if write:
        atomic_write_bytes(params_file, new.encode())
    return True
