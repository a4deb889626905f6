"""One module per DVC stage: a pure ``run(...)`` plus ``main()`` for ``python -m tasks.<stage>``.

DVC runs each as ``sh tasks/stage.sh <stage>``, which picks the project's python. Importing ``tasks``
as a library (a notebook, the flow, the tests) changes nothing; as a stage command, the set-up below
runs first, before anything reads the environment it sets.
"""

import importlib.util
import os
import sys
import time

STARTED = time.time()  # the stage command's start, near enough: its start-up is timed from here

# what every stage imports; checked by name (cheap) before anything heavy is imported
_REQUIRED = ("torch", "torchvision", "diffusers", "timm", "webdataset", "pydantic", "yaml")


def _prepare_command() -> None:
    """For ``python -m tasks.<name>`` only: exit 2 with one line when this python lacks the project's
    packages; under a log rather than a terminal, progress bars redrawn every 10 s rather than many
    times a second; OpenMP's passive waits when cores are busy (:func:`sda.cores.choose_wait_policy`).
    tqdm and OpenMP read these settings when they load."""
    argv = sys.orig_argv
    if "-m" not in argv[:-1] or not argv[argv.index("-m") + 1].startswith("tasks."):
        return
    missing = [m for m in _REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        print(f"error: {sys.executable} lacks {', '.join(missing)}, which the stages need: run `make install`, "
              "then `make repro` (or `source .venv/bin/activate` and `dvc repro`)", file=sys.stderr)
        raise SystemExit(2)
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_MININTERVAL", "10")
    from sda.cores import choose_wait_policy  # the standard library and psutil only

    choose_wait_policy()


_prepare_command()

from sda.layout import STAGE_ORDER as STAGES  # noqa: E402  (the stages in order)
