"""What ``target_data`` tells the later stages about its domains: one typed object, written and read here.

Every domain's ``write_targets`` (:mod:`sda.domains`) ends with :meth:`TargetIndex.write`
(``<target_data>/domains.json``);
``target_project``, ``evaluate``, ``streams`` and the relabel service read it with :meth:`TargetIndex.read`.
The file's keys are the ones it always had (``corruption_domains`` is :attr:`TargetIndex.in_mean`), so
existing outs keep their bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sda.io.atomic import atomic_write_json

__all__ = ["INDEX", "TargetIndex"]

INDEX = "domains.json"


@dataclass(frozen=True)
class TargetIndex:
    """The target domains of a pipeline run.

    ``domains``: every target domain, in the order the stages go through them (one shard folder each);
    ``corruptions``: the corruption names of ``target_data.corruptions`` the domain applied (empty when it
    applied none); ``in_mean``: the domains averaged in the results' "mean (corruptions)" row (the
    corrupted domains, and a folder profile's labelled folders); ``split``: the source split (or the
    ImageNet val set) the corruptions were applied to; ``unlabelled``: flat folders, whose images are
    predicted and never scored (None: the domain has no such folders); ``severity`` / ``severities``: the
    corruption severity, or the ImageNet-C severities (None where the domain does not have it)."""

    domains: tuple[str, ...]
    corruptions: tuple[str, ...]
    in_mean: tuple[str, ...]
    split: str
    unlabelled: tuple[str, ...] | None = None
    severity: int | None = None
    severities: tuple[int, ...] | None = None

    @property
    def labelled(self) -> list[str]:
        """The domains whose images carry labels (scored), in order."""
        flat = set(self.unlabelled or ())
        return [d for d in self.domains if d not in flat]

    @property
    def labelled_in_mean(self) -> list[str]:
        """:attr:`in_mean` without the unlabelled folders: the domains the streams are measured on."""
        flat = set(self.unlabelled or ())
        return [d for d in self.in_mean if d not in flat]

    @property
    def generated(self) -> list[str]:
        """The domains of :attr:`in_mean` made by corrupting images (not a folder of real target images); with
        several ImageNet-C severities a domain is named ``<corruption>_s<severity>``."""
        made = set(self.corruptions)
        if not made:
            return list(self.in_mean)
        return [d for d in self.in_mean if d in made or d.rsplit("_s", 1)[0] in made]

    def as_json(self) -> dict[str, Any]:
        """The ``domains.json`` mapping, keys in the file's order; fields a domain does not have are left out."""
        out: dict[str, Any] = {"domains": list(self.domains), "corruptions": list(self.corruptions),
                               "corruption_domains": list(self.in_mean)}
        if self.unlabelled is not None:
            out["unlabelled"] = list(self.unlabelled)
        if self.severities is not None:
            out["severities"] = list(self.severities)
        out["split"] = self.split
        if self.severity is not None:
            out["severity"] = self.severity
        return out

    def write(self, folder: Path) -> None:
        """``<folder>/domains.json``, atomically."""
        atomic_write_json(Path(folder) / INDEX, self.as_json())

    @classmethod
    def read(cls, folder: Path) -> "TargetIndex":
        """The index of a ``target_data`` (or ``target_project``) folder."""
        raw = json.loads((Path(folder) / INDEX).read_text())
        return cls(domains=tuple(raw["domains"]), corruptions=tuple(raw.get("corruptions", ())),
                   in_mean=tuple(raw["corruption_domains"]), split=raw.get("split", ""),
                   unlabelled=tuple(raw["unlabelled"]) if "unlabelled" in raw else None,
                   severity=raw.get("severity"),
                   severities=tuple(raw["severities"]) if "severities" in raw else None)
