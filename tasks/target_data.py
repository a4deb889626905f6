"""Stage target_data: the target domains, from the domain registry (``profile``, :mod:`sda.domains`).

embedded: the chosen source split (``test`` for reported numbers, ``val`` for tuning) clean and
under each ImageNet-C corruption at one severity (corrupt-tta). imagenet: ImageNet val (``clean``),
the ImageNet-C files of the same images per corruption and severity, ImageNet-W. folder: your target
folders (labelled or not) and the corruptions of the source test split.

Writes ``data/target_data/<domain>/`` shard sets and ``domains.json`` (domains, the ones the mean
is taken over, the unlabelled ones).
"""

from __future__ import annotations

import argparse

from sda.config import Params
from sda.domains import Domain, domain_for
from sda.layout import OUTS
from tasks.common import stage_main


def _main(params: Params, args: argparse.Namespace, domain: Domain) -> None:
    domain.write_targets(params, OUTS["source_data"], OUTS["target_data"])


if __name__ == "__main__":
    stage_main("target_data", __doc__, _main, domain_for=lambda params: domain_for(params, inputs=True))
