"""``sda check`` (``make check``): validate params.yaml and every user folder in seconds, train nothing,
and print what a run will use.

For the folder profile: the classes with their images per split (the split ``source_data`` will make,
after decoding), the target folders (labelled or flat) with their counts, every file that will not be
used and why, and warnings (class imbalance, tiny classes, images far from ``folder.image_size``).
Exit status 0 when the run can start, 2 with a one-line ``error:`` when it cannot. ``make run`` runs it
first.

    python -m sda.domains.check [--params params.yaml] [--all-skipped]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

from sda.config import Params, ParamsError, load_params
from sda.io.console import printable, printable_console

__all__ = ["check", "main"]

IMBALANCE = 3.0      # warn when the largest class holds this many times the smallest's images
TINY_CLASS = 20      # warn below this many images in a class
FAR_SIZE = 4.0       # warn when the median shorter side is this far (x or /) from image_size


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(c.rjust(w) if c.isdigit() else c.ljust(w) for c, w in zip(r, widths)).rstrip(),
              file=out)


def _folder_report(params: Params, out: TextIO, all_skipped: bool) -> int:
    """Check the folder profile's folders; print the report; the number of warnings."""
    from sda.domains.folder import check_targets, source_inventory, source_pictures, split_files, target_inventories

    cfg = params.folder
    src = source_inventory(params, progress=False)
    splits = split_files({n: [src.root / f for f in fs] for n, fs in src.files.items()}, cfg.val_fraction,
                         cfg.test_fraction, params.runtime.seed)
    names = sorted(src.files)
    targets = target_inventories(params, progress=False)
    check_targets(params, targets, names, source_pictures(src.fingerprints, src.root, cfg.near_duplicates))
    per = {s: {n: 0 for n in names} for s in splits}
    for s, items in splits.items():
        for _, label in items:
            per[s][names[label]] += 1
    print(f"source {printable(str(src.root))}: {len(names)} classes, {sum(src.counts.values())} images (split by runtime.seed "
          f"{params.runtime.seed})", file=out)
    _table([["class", "train", "val", "test"]] + [[printable(n), *(str(per[s][n]) for s in ("train", "val", "test"))]
                                                  for n in names], out)
    if targets:
        print("targets:", file=out)
        rows = [["name", "kind", "images", "folder"]]
        for name, inv in targets.items():
            kind = f"labelled ({len(inv.files)} classes)" if inv.labelled else "flat (no accuracy)"
            rows.append([name, kind, str(sum(inv.counts.values())), printable(str(inv.root))])
        _table(rows, out)
    td = params.target_data
    if cfg.corruptions:
        print(f"  + {'clean and ' if td.include_clean else ''}{len(td.corruptions)} corruption(s) of the source test "
              f"split at severity {td.severity}", file=out)
    skipped = src.skipped + [s for inv in targets.values() for s in inv.skipped]
    if skipped:
        shown = skipped if all_skipped else skipped[:20]
        print(f"not used: {len(skipped)} file(s)", file=out)
        for s in shown:
            print(f"  {printable(s['file'])}: {printable(s['reason'])}", file=out)
        if len(shown) < len(skipped):
            print(f"  ... {len(skipped) - len(shown)} more (--all-skipped lists them)", file=out)
    warnings = []
    counts = src.counts
    if max(counts.values()) > IMBALANCE * min(counts.values()):
        big, small = max(counts, key=counts.get), min(counts, key=counts.get)
        warnings.append(f"class imbalance: {big} has {counts[big]} images, {small} {counts[small]} (over {IMBALANCE:g}x)")
    tiny = [n for n, k in counts.items() if k < TINY_CLASS]
    if tiny:
        warnings.append(f"tiny classes (under {TINY_CLASS} images): {', '.join(tiny)}")
    sides = np.array([min(s) for s in src.sizes])
    med = float(np.median(sides))
    if med > FAR_SIZE * cfg.image_size or med < cfg.image_size / FAR_SIZE:
        warnings.append(f"images far from folder.image_size={cfg.image_size}: their median shorter side is {med:.0f} px")
    dark = [src.root / f for f in src.dark] + [inv.root / f for inv in targets.values() for f in inv.dark]
    if dark:
        warnings.append(f"{len(dark)} image(s) of 16 bits or more are nearly black (brightest pixel at most 16 of 255, "
                        f"e.g. {printable(str(dark[0]))}): 12-bit data stored in 16 bits without a PNG sBIT chunk is read "
                        "as 16-bit; save them with sBIT or scaled to the full 16 bits")
    for w in warnings:
        print(f"warning: {w}", file=out)
    return len(warnings)


def check(params_file: str | Path = "params.yaml", out: TextIO = sys.stdout, all_skipped: bool = False) -> int:
    """Run the checks and print the report to ``out``; the number of warnings. Raises ParamsError,
    ValueError or FileNotFoundError with the one line that says what is wrong."""
    from sda.domains import domain_for

    params = load_params(params_file)
    domain = domain_for(params)
    print(f"{params_file}: valid; profile {params.profile} ({domain.description})", file=out)
    if params.profile == "folder":
        return _folder_report(params, out, all_skipped)
    return 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="sda check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    ap.add_argument("--all-skipped", action="store_true", help="list every file not used (default: the first 20)")
    args = ap.parse_args(argv)
    printable_console()
    logging.getLogger("sda").setLevel(logging.ERROR)  # every file not used is in the report, not the log
    t0 = time.perf_counter()
    try:
        warnings = check(args.params, all_skipped=args.all_skipped)
    except (ParamsError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"check passed in {time.perf_counter() - t0:.1f} s" + (f" ({warnings} warning(s))" if warnings else ""))


if __name__ == "__main__":
    main()
