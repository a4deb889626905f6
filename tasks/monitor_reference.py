"""Stage monitor_reference: what the relabel service's monitor compares each batch with (docs/service.md).

The pipeline's evaluated target domains (``data/target_data``, labelled ones) as the service itself sees
them, computed once per set of models and versioned with them: ``relabel.monitor.reference_images`` images
labelled exactly as the service labels (:class:`sda.relabel.predict.SdaPredictor`: each image projected
on its own), their label counts, confidences and ATC threshold (``reference.json``,
:func:`sda.relabel.monitor.pipeline_reference`), and the source model's features of
``relabel.monitor.input_images`` images of each domain for the input test (``inputs.npz``,
:func:`sda.relabel.monitor.input_reference`). A relabel run reads them when ``dvc.lock`` says they were
made from the models it loads (:func:`flows.relabel.computed_reference`), so its first batch waits for
nothing; without them (another checkout, changed models) it computes its own, as before.

Writes ``data/monitor_reference/{reference.json, inputs.npz}``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sda.config import Params
from sda.io.atomic import atomic_dir
from sda.layout import OUTS
from tasks.common import stage_main

log = logging.getLogger("sda.monitor_reference")


def run(params: Params, device, target_dir: Path = OUTS["target_data"], out: Path = OUTS["monitor_reference"]) -> int:
    """Write the reference and the input reference of ``target_dir`` into ``out``; the images labelled."""
    from sda.relabel.monitor import (INPUTS_FILE, REFERENCE_FILE, input_key, input_reference, pipeline_reference,
                                     reference_key)
    from sda.relabel.predict import SdaPredictor, models_read

    m, seed, adapt = params.relabel.monitor, params.runtime.seed, params.relabel.adapt
    predictor = SdaPredictor(models_read(Path("."), params), params.projection, device,
                             guard=params.streams.guard if adapt == "sda+bn" else None)
    key = reference_key(target_dir, m.reference_images, seed, adapt)
    ref = pipeline_reference(target_dir, predictor, images=m.reference_images, seed=seed, key=key)
    log.info("monitor reference: %d images of %d evaluated domain(s), SDA %.1f %% there, ATC threshold %.3f",
             len(ref.confidences), len(ref.domains), ref.accuracy, ref.threshold)
    inputs = input_reference(target_dir, predictor.source, images=m.input_images, seed=seed,
                             key=input_key(key, m.input_images), device=predictor.device)
    log.info("input reference: %d images of %d domain(s), %d components", sum(len(p) for p in inputs.pools),
             len(inputs.domains), len(inputs.scale))
    with atomic_dir(out) as tmp:
        ref.save(tmp / REFERENCE_FILE)
        inputs.save(tmp / INPUTS_FILE)
    return len(ref.confidences)


def _main(params: Params, args: argparse.Namespace) -> int:
    return run(params, args.device)


if __name__ == "__main__":
    stage_main("monitor_reference", __doc__, _main)
