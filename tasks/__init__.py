"""One module per DVC stage: a pure ``run(...)`` plus ``main()`` for ``python -m tasks.<stage>``."""

import importlib.util
import os
import sys
import time
from pathlib import Path

STARTED = time.time()  # the stage process's start, near enough: its start-up cost is measured from here

# What every stage imports; checked by name (cheap) before anything heavy is imported.
_REQUIRED = ("torch", "torchvision", "diffusers", "timm", "webdataset", "pydantic", "yaml")


def _run_with_project_python() -> None:
    """DVC runs ``python -m tasks.<stage>`` through the shell, so ``dvc repro`` from outside the
    activated venv would run the stages with whatever ``python`` is first on PATH. When that one
    lacks the project's packages, re-run the same command with the repository's ``.venv`` python
    (what ``make install`` creates), or exit 2 with what to do."""
    missing = [m for m in _REQUIRED if importlib.util.find_spec(m) is None]
    if not missing:
        return
    venv_python = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"
    if venv_python.is_file() and not os.environ.get("SDA_REEXEC"):
        os.environ["SDA_REEXEC"] = "1"  # once: a broken venv must not loop
        os.execv(venv_python, [str(venv_python), *sys.orig_argv[1:]])
    print(f"error: {sys.executable} lacks {', '.join(missing)}: the stages need the project's environment. "
          f"Run `make install` (creates .venv), then `.venv/bin/dvc repro` or `source .venv/bin/activate`; "
          "or `pip install -e .` into this interpreter's environment.", file=sys.stderr)
    raise SystemExit(2)


_module = sys.orig_argv[sys.orig_argv.index("-m") + 1] if "-m" in sys.orig_argv[:-1] else ""
if _module.startswith("tasks."):  # `python [opts] -m tasks.<stage>`: a stage command, not a library import
    _run_with_project_python()

# Under DVC / Prefect / CI stderr is a log, not a terminal: redraw progress bars every 10 s rather
# than many times a second. tqdm reads TQDM_* at import time, so this must precede any sda import.
if not sys.stderr.isatty():
    os.environ.setdefault("TQDM_MININTERVAL", "10")


# runtime.threads is fixed (the bytes depend on it), so a stage may start with fewer idle cores than
# threads; OpenMP's spinning waits then make training 3-12x slower (docs/method.md, the embedded domain). Passive waits cost
# ~15 % on an idle machine and remove that; same bytes either way. OpenMP reads this when torch
# loads, hence here, before torch is imported (sda.cores does not). An explicit OMP_WAIT_POLICY wins.
from sda.cores import busy_cores  # noqa: E402

# The stage server (tasks/stage_server.py) keeps the idle machine's policy whatever the load when it
# starts: a command that picks PASSIVE here differs from it, and so runs in its own process.
if "OMP_WAIT_POLICY" not in os.environ and _module != "tasks.stage_server" and busy_cores():
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

# With a warm stage server (tasks/stage_server.py; the pipeline flow starts one), a stage command
# runs in a child of it rather than importing torch & co. itself; same bytes, ~5-10 s sooner.
if _module in {f"tasks.{s}" for s in STAGES}:
    from tasks.stage_server import ENV, exit_like, run_via_server  # the standard library only

    if os.environ.get(ENV):
        _args = sys.orig_argv[sys.orig_argv.index("-m") + 2:]
        _status = run_via_server(os.environ[ENV], _module, _args, STARTED)
        if _status is not None:
            exit_like(_status)
