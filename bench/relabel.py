"""Relabel throughput: images/s of the whole job (scan + hash + decode + DDA projection + SDA
predict + Parquet commit) on target images written as PNG files, with this checkout's models.

    python bench/relabel.py                 # 1080 images (the gaussian_noise + pixelate test sets)
    python bench/relabel.py --images 270 --batch-sizes 64 256
    python bench/relabel.py --scan 10000    # the inbox scan alone: one tar of N members, N files, twice

Needs the pipeline's outputs (make run), except --scan. Writes only to a temporary folder.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from sda.relabel.inbox import scan_inbox  # noqa: E402
from flows.relabel import relabel_job  # noqa: E402
from sda.relabel.service import run_job  # noqa: E402
from sda.runtime import set_threads  # noqa: E402
from sda.io.shards import iter_samples  # noqa: E402
from sda.config import load_params  # noqa: E402
import sda.domains  # noqa: E402, F401  (the domains' params sections)


def scan_rates(n: int) -> None:
    """Seconds to scan (walk, open safely, hash every image) one plain tar of ``n`` members, a folder
    of ``n`` files, and the same folder again."""
    import numpy as np

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        tar_inbox, files_inbox = Path(tmp) / "tar", Path(tmp) / "files"
        tar_inbox.mkdir()
        import tarfile

        with tarfile.open(tar_inbox / "shard.tar", "w") as tar:
            for i in range(n):
                data = png + i.to_bytes(4, "little")  # distinct images
                info = tarfile.TarInfo(f"k{i:06d}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        for i in range(n):
            p = files_inbox / f"d{i // 1000}" / f"{i:06d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(png + i.to_bytes(4, "little"))
        for what, inbox in (("one tar", tar_inbox), ("files", files_inbox)):
            t0 = time.perf_counter()
            scan = scan_inbox(inbox)
            dt = time.perf_counter() - t0
            print(f"scan {what:22s}: {len(scan.items)} images in {dt:.2f} s ({len(scan.items) / dt:,.0f} images/s)")
        # the next run's scan after these were labelled: unchanged files are not read again
        done = {it.sha256 for it in scan.items}
        t0 = time.perf_counter()
        again = scan_inbox(files_inbox, skip=done, index=scan.index)
        dt = time.perf_counter() - t0
        print(f"scan {'files, labelled, again':22s}: {len(again.known)} known, {len(again.items)} new in {dt:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1080)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--scan", type=int, metavar="N", help="only measure the inbox scan on N images, then exit")
    args = ap.parse_args()
    if args.scan:
        return scan_rates(args.scan)
    params = load_params(ROOT / "params.yaml")
    threads = set_threads(params.runtime.threads)
    images = []
    for domain in ("gaussian_noise", "pixelate", "snow", "fog"):
        for s in iter_samples(ROOT / "data" / "target_data" / domain):
            images.append(s.image)
            if len(images) == args.images:
                break
        if len(images) == args.images:
            break
    print(f"{len(images)} images, {params.embedded.image_size} px, torch threads {threads}, "
          f"projection respacing={params.projection.respacing} N={params.projection.N} "
          f"batch={params.projection.batch_size}")
    for bs in args.batch_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            inbox = Path(tmp) / "inbox"
            for i, img in enumerate(images):
                p = inbox / f"d{i // 500}" / f"{i:05d}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                p.write_bytes(buf.getvalue())
            job = relabel_job(ROOT, params, inbox=str(inbox),  # as the CLI and the flow start a run
                              overrides={"labels": f"{tmp}/labels", "quarantine": f"{tmp}/q", "batch_size": bs,
                                         "min_age_seconds": 0})
            t0 = time.perf_counter()
            summary = run_job(job, lambda j, batch, i: j.process(batch))
            dt = time.perf_counter() - t0
            print(f"batch_size {bs:4d}: {summary['labelled']} labelled in {dt:.1f} s -> "
                  f"{summary['labelled'] / dt:.1f} images/s (model loading included)")


if __name__ == "__main__":
    main()
