"""Methods x target streams over several runs (seeds): mean ± std of each ``metrics/streams.json``'s top-1 %,
how far a combination is from the best method of each stream, and which method is best where
(docs/streams.md). Prints markdown.

    .venv/bin/python bench/streams_seeds.py metrics/streams.json /tmp/s1/metrics/streams.json /tmp/s2/metrics/streams.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="streams.json files, one per seed")
    ap.add_argument("--combo", default="sda+bn+lame", help="the combination to check (default %(default)s)")
    args = ap.parse_args()
    runs = [json.loads(p.read_text()) for p in args.runs]
    streams = list(runs[0]["streams"])
    methods = list(runs[0]["streams"][streams[0]])
    seeds = [r["protocol"]["seed"] for r in runs]

    def vals(s: str, m: str, key: str = "mean") -> np.ndarray:
        return np.array([r["streams"][s][m][key] for r in runs])

    print(f"seeds {seeds}; mean ± std of top-1 % (each stream on its own images)\n")
    print("| method | " + " | ".join(streams) + " | spread (same images) | UNet FE | classifier fwd / bwd |")
    print("|---|" + "---|" * (len(streams) + 3))
    for m in methods:
        cells = [f"{vals(s, m).mean():.1f} ± {vals(s, m).std():.1f}" for s in streams]
        spread = np.mean([r["methods"][m]["spread"] for r in runs])
        c = runs[0]["methods"][m]["cost_per_image"]
        print(f"| {m} | " + " | ".join(cells) + f" | {spread:.1f} | {c['unet_forward_equivalents']:g} | "
              f"{c['classifier_forwards']:.3g} / {c['classifier_backwards']:.3g} |")
    combo = args.combo
    print(f"\n{combo} against the best method of each stream (mean of the runs; aim: within 0.5 point):")
    for s in streams:
        got = vals(s, combo).mean()
        best = max((m for m in methods if m != combo), key=lambda m: vals(s, m).mean())
        ref = vals(s, best).mean()
        print(f"- {s}: {got:.2f} vs {best} {ref:.2f}: {'met' if got >= ref - 0.5 else 'NOT met'}")
    print("\nbest method per stream (mean of the runs): " + ", ".join(
        f"{s} {max(methods, key=lambda m: vals(s, m).mean())}" for s in streams))


if __name__ == "__main__":
    main()
