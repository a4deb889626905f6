"""Stage source_data: the source domain as WebDataset shard sets, and its class list.

What the source is comes from the domain registry (``profile``, :mod:`sda.domains`): the digits as
``train/val/test`` (embedded), the ImageNet class list and, for fine-tuning, ``train`` (imagenet),
your class folders as ``train/val/test`` (folder). Writes ``data/source_data/`` with
``classes.json`` and ``params.json`` (the params sections the domain read).
"""

from __future__ import annotations

import argparse

from sda.config import Params
from sda.domains import Domain, domain_for
from sda.io.atomic import atomic_write_json
from sda.layout import OUTS
from tasks.common import section_json, stage_main

def _main(params: Params, args: argparse.Namespace, domain: Domain) -> None:
    out = OUTS["source_data"]
    domain.write_source(params, out)
    # content only: runtime's device / threads / workers do not change these bytes, the seed does
    atomic_write_json(out / "params.json", {**section_json(params, *domain.sections), "seed": params.runtime.seed})


if __name__ == "__main__":
    stage_main("source_data", __doc__, _main, domain_for=lambda params: domain_for(params, inputs=True))
