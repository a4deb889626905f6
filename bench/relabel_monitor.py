"""The relabel monitor on a scripted stream, through the real CLI and label store, with this checkout's
models (run the pipeline first). One CLI run per batch of ``--batch`` images:

1. ``--evaluated`` batches drawn from the target domains the pipeline evaluated, in turn all of them mixed
   and one domain alone (a real inbox gets one kind of image at a time): nothing should be flagged;
2. ``--shifted`` batches of each corruption the pipeline did not evaluate (``--corruption``, on the source
   test split at the pipeline's severity): the first should be flagged (by the input test where the labels
   and confidences look like the reference's);
3. ``--skewed`` batches of evaluated images whose classes are two of the ten: the first should be flagged.

Prints a row per batch (the monitor's verdict and p-values, its ATC estimate against the true accuracy,
which this script knows and the service does not), whether the aims of docs/service.md hold, and the time
the monitor adds to a batch (the same batch labelled with ``relabel.monitor.enabled`` on and off).

    .venv/bin/python bench/relabel_monitor.py
    .venv/bin/python bench/relabel_monitor.py --corruption spatter saturate --batch 200
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sda.domains.corruptions import corrupt_images  # noqa: E402
from sda.io.shards import iter_samples  # noqa: E402
from sda.relabel.store import read_table  # noqa: E402


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _run(inbox: Path, store: Path, *extra: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "flows.relabel", "--inbox", str(inbox), "--labels", str(store / "labels"),
                        "--quarantine", str(store / "quarantine"), "--min-age", "0", *extra],
                       cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(r.stdout[r.stdout.index("{"):]), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=120, help="images per CLI run (default %(default)s)")
    ap.add_argument("--evaluated", type=int, default=10)
    ap.add_argument("--shifted", type=int, default=3)
    ap.add_argument("--skewed", type=int, default=3)
    ap.add_argument("--corruption", nargs="+", default=["speckle_noise", "gaussian_blur", "saturate", "spatter"],
                    help="corruptions the pipeline did not evaluate (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing-pairs", type=int, default=5, help="batches labelled with and without the monitor, in turn")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    index = json.loads((ROOT / "data/target_data/domains.json").read_text())
    if evaluated := sorted(set(args.corruption) & set(index["domains"])):
        sys.exit(f"--corruption {evaluated}: the pipeline evaluated it; pick ones it did not")
    labelled = [d for d in index["domains"] if d not in set(index.get("unlabelled", []))]
    by_domain = {d: [(s.image, s.label) for s in iter_samples(ROOT / "data/target_data" / d)] for d in labelled}
    pool = [p for d in labelled for p in by_domain[d]]
    test = [(s.image, s.label) for s in iter_samples(ROOT / "data/source_data/test")]
    severity = int(index.get("severity") or 5)

    def draw(items, n):
        return [items[i] for i in rng.choice(len(items), size=min(n, len(items)), replace=False)]

    plan = []
    for k in range(args.evaluated):
        if k % 2 == 0:
            plan.append(("evaluated", draw(pool, args.batch)))
        else:
            d = labelled[int(rng.integers(len(labelled)))]
            plan.append((f"evaluated ({d})", draw(by_domain[d], args.batch)))
    for corruption in args.corruption:
        for _ in range(args.shifted):
            part = draw(test, args.batch)
            imgs = corrupt_images(np.stack([x for x, _ in part]), corruption, severity, int(rng.integers(1 << 30)))
            plan.append((corruption, list(zip(imgs, [y for _, y in part]))))
    classes = rng.choice(sorted({y for _, y in pool}), size=2, replace=False)
    few = [p for p in pool if p[1] in classes]
    plan += [(f"classes {classes[0]},{classes[1]}", draw(few, args.batch)) for _ in range(args.skewed)]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        for i, (kind, items) in enumerate(plan):
            inbox = Path(tmp) / f"inbox{i}"
            inbox.mkdir()
            truth = {}
            for j, (img, y) in enumerate(items):
                data = _png(img)
                (inbox / f"{j:04d}.png").write_bytes(data)
                truth[hashlib.sha256(data).hexdigest()] = y
            summary, seconds = _run(inbox, store, "--batch-size", str(len(items)))
            m = summary["monitor"]
            labels = {r["sha256"]: r["label"] for r in read_table(store / "labels").to_pylist() if r["sha256"] in truth}
            true_acc = 100 * np.mean([labels[h] == y for h, y in truth.items() if h in labels])
            rows.append((kind, m, true_acc))
            t = m["tests"]
            print(f"{i:2d} {kind:<28} {m['images']:4d} img  drift {str(m['drift']):<5}  est {m['estimated_accuracy']:5.1f} "
                  f"true {true_acc:5.1f}  p(labels) {t.get('labels', {}).get('p', float('nan')):.2g}  "
                  f"p(conf) {t.get('confidence', {}).get('p', float('nan')):.2g}  "
                  f"p(inputs) {t.get('inputs', {}).get('p', float('nan')):.2g} ({t.get('inputs', {}).get('nearest', '')})"
                  f"  fired: {','.join(m.get('fired', [])) or '-'}  ({seconds:.0f} s)", flush=True)
        # what the monitor adds: more batches of evaluated images, monitored and not in turn (reference cached);
        # the run summary's seconds exclude the process start, which the monitor does not change
        times: dict[str, list[float]] = {"monitored": [], "not": []}
        for k in range(args.timing_pairs):
            for flag in ("monitored", "not") if k % 2 == 0 else ("not", "monitored"):
                inbox = Path(tmp) / f"time-{flag}-{k}"
                inbox.mkdir()
                for j, (img, _) in enumerate(draw(pool, args.batch)):
                    (inbox / f"{j:04d}.png").write_bytes(_png(img))
                extra = ("--no-monitor",) if flag == "not" else ()
                times[flag].append(_run(inbox, store, "--batch-size", str(args.batch), *extra)[0]["seconds"])
    ev = [r for r in rows if r[0].startswith("evaluated")]
    big = [r for r in rows if r[1]["images"] >= 100]
    err = np.array([abs(r[1]["estimated_accuracy"] - r[2]) for r in big])
    first = {}
    for kind, m, _ in rows:
        first.setdefault(kind, (m["drift"], ",".join(m.get("fired", [])) or "-"))
    print(f"\nevaluated batches flagged: {sum(r[1]['drift'] for r in ev)} of {len(ev)}")
    print("first batch of each shift flagged: " + ", ".join(f"{k}: {v[0]} ({v[1]})" for k, v in first.items()
                                                            if not k.startswith("evaluated")))
    print(f"ATC estimate vs true accuracy over {len(big)} batches of >= 100 images: mean |error| {err.mean():.1f} "
          f"points, max {err.max():.1f}")
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"labelling time of a batch of {args.batch} (the run summary's seconds, median of {args.timing_pairs} "
          f"runs each, in turn): {med['monitored']:.2f} s monitored, {med['not']:.2f} s not: "
          f"x{med['monitored'] / med['not']:.3f} (each: {times})")


if __name__ == "__main__":
    main()
