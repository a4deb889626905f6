"""One module per DVC stage: a pure ``run(...)`` plus ``main()`` for ``python -m tasks.<stage>``."""

import os
import sys

# Under DVC / Prefect / CI stderr is a log, not a terminal: redraw progress bars every 10 s rather
# than many times a second. tqdm reads TQDM_* at import time, so this must precede any sda import.
if not sys.stderr.isatty():
    os.environ.setdefault("TQDM_MININTERVAL", "10")


def _some_core_busy(sample_s: float = 0.1) -> bool:
    try:
        import psutil

        return any(b >= 50.0 for b in psutil.cpu_percent(interval=sample_s, percpu=True))
    except Exception:  # psutil missing or /proc unreadable
        return False


# runtime.threads is fixed (the bytes depend on it), so a stage may start with fewer idle cores than
# threads; OpenMP's spinning waits then make training 3-12x slower (DESIGN.md §4). Passive waits cost
# ~15 % on an idle machine and remove that; same bytes either way. OpenMP reads this when torch
# loads, hence here, before any sda import. An explicit OMP_WAIT_POLICY wins.
if "OMP_WAIT_POLICY" not in os.environ and _some_core_busy():
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

STAGES: tuple[str, ...] = (
    "source_data",
    "source_model",
    "diffusion_finetune",
    "synth_generate",
    "synth_align",
    "classifier_align",
    "target_data",
    "target_project",
    "evaluate",
)
