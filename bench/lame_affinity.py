"""Which graph ``sda+lame`` builds, chosen on the source val split (never on an evaluated target domain).

    python bench/lame_affinity.py [--data data] [--params params.yaml] [--seeds 0 1 2]

The source val split is projected with the pipeline's projection (the projector of ``target_project``),
then streamed as the ``streams`` stage streams a target domain: i.i.d. and class-sorted, batches of 64, the
order drawn from each seed. Each candidate (affinity rbf / knn k / linear over the features of both models,
the aligned model or the source model) is LAME on SDA's summed logits; the table gives its top-1 % on both
streams and their mean beside plain SDA's. The published LAME default (rbf) stays the ``lame`` baseline's;
``streams.sda_lame`` takes the best mean.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sda.config import load_params  # noqa: E402
from sda.layout import projector_dir  # noqa: E402
from sda.method.guarded import SdaLameParams, sda_lame  # noqa: E402
from sda.method.projector import Projector  # noqa: E402
from sda.method.catalog import StreamInputs, frozen_outputs, read_source_split  # noqa: E402
from sda.method.streams import stream_batches  # noqa: E402
from sda.models.classifiers import load_classifier  # noqa: E402
from sda.runtime import derive_seed  # noqa: E402

CANDIDATES = [("rbf", 5, "both"), ("linear", 5, "both"), ("knn", 3, "both"), ("knn", 5, "both"),
              ("knn", 10, "both"), ("knn", 5, "aligned"), ("knn", 5, "source")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "data")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    params = load_params(args.params)
    images, labels = read_source_split(args.data / "source_data")("val")
    projector = Projector(args.data.parent / projector_dir(params.projection.method), params.projection)
    bs = projector.batch_size
    seeds = [derive_seed(params.runtime.seed, "lame_affinity", i) for i in range(len(images))]
    projections = np.concatenate([projector(images[c: c + bs], seeds[c: c + bs]) for c in range(0, len(images), bs)])
    source = load_classifier(args.data / "source_model")
    aligned = load_classifier(args.data / "classifier_align")
    frozen = frozen_outputs(source, aligned, images, projections, torch.device("cpu"))
    sda = (frozen["source_orig"] + frozen["aligned_proj"]).argmax(1).numpy()
    rows = {"sda (no LAME)": {}}
    for stream, delta in (("iid", None), ("class_sorted", 0.0)):
        accs = {c: [] for c in CANDIDATES}
        for seed in args.seeds:
            batches = stream_batches({"val": len(images)}, labels, order="iid" if delta is None else "correlated",
                                     batch_size=args.batch_size, seed=seed, name=stream, delta=delta)
            for c in CANDIDATES:
                pred = np.zeros(len(images), dtype=np.int64)
                p = SdaLameParams(affinity=c[0], knn=c[1], features=c[2])
                for b in batches:
                    idx = b.indices
                    batch = StreamInputs(images[idx], projections[idx], [""] * len(idx),
                                         {k: v[idx] for k, v in frozen.items()})
                    pred[idx] = sda_lame(batch, p).argmax(1).numpy()
                accs[c].append((pred == labels).mean() * 100)
        for c in CANDIDATES:
            rows.setdefault(f"{c[0]} k={c[1]} {c[2]}", {})[stream] = float(np.mean(accs[c]))
        rows["sda (no LAME)"][stream] = float((sda == labels).mean() * 100)
    print(f"source val split: {len(images)} images, batches of {args.batch_size}, seeds {args.seeds}")
    print(f"{'candidate':24} {'iid':>7} {'class_sorted':>13} {'mean':>7}")
    for name, r in rows.items():
        print(f"{name:24} {r['iid']:7.2f} {r['class_sorted']:13.2f} {(r['iid'] + r['class_sorted']) / 2:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
