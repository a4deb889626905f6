"""Stage target_project: the DDA projection of every target domain, keys preserved.

Resumable shard jobs over all domains; writes ``data/target_project/<domain>/`` for each domain of
``data/target_data/``.
"""

from __future__ import annotations

import argparse
import shutil

from sda.config import Params
from sda.io.target_index import INDEX, TargetIndex
from sda.layout import OUTS
from tasks.common import stage_main
from tasks.projection_stage import run_projection


def _main(params: Params, args: argparse.Namespace) -> int:
    src = OUTS["target_data"]
    domains = list(TargetIndex.read(src).domains)
    summary = run_projection("target_project", params, args.device, src, domains, OUTS["target_project"])
    shutil.copy2(src / INDEX, OUTS["target_project"] / INDEX)
    return summary["new_items"]


if __name__ == "__main__":
    stage_main("target_project", __doc__, _main)
