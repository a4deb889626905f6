"""One module per DVC stage: a pure ``run(...)`` plus ``main()`` for ``python -m tasks.<stage>``."""

import os
import sys

# Under DVC / Prefect / CI stderr is a log, not a terminal: redraw progress bars every 10 s rather
# than many times a second. tqdm reads TQDM_* at import time, so this must precede any sda import.
if not sys.stderr.isatty():
    os.environ.setdefault("TQDM_MININTERVAL", "10")

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
