"""Stage synth_align ("Mix of Diffusion"): re-project the synthetic set with the DDA projection of
the unconditional model, so it carries the artefacts of projected target images.

Resumable shard jobs (one per synthetic shard); writes ``data/synth_align/`` with the same keys as
``data/synth_generate/``.
"""

from __future__ import annotations

import argparse

from sda.config import Params
from sda.layout import OUTS
from tasks.common import stage_main
from tasks.projection_stage import run_projection


def _main(params: Params, args: argparse.Namespace) -> int:
    return run_projection("synth_align", params, args.device, OUTS["synth_generate"], [""],
                          OUTS["synth_align"])["new_items"]


if __name__ == "__main__":
    stage_main("synth_align", __doc__, _main)
