"""``sda``: the project's commands under one name (the console script of pyproject.toml).

    sda run [--profile imagenet] [--stages ...]    the pipeline: Prefect flow over the DVC stages (python -m flows.pipeline)
    sda relabel [--inbox DIR]                      label new target images now (python -m flows.relabel)
    sda relabel status [-n RUNS]                   the last runs as the monitor saw them: images, estimated accuracy, drift
    sda serve [--port 4200]                        a Prefect server and the deployments (python -m flows.serve)
    sda stage <name> [--params FILE]               one stage's command, as dvc repro runs it (python -m tasks.<name>)
    sda check [--params FILE]                      validate params and your folders, train nothing (python -m sda.domains.check)

Each replaces itself with ``python -m <module>`` of this interpreter, so exit status, signals and
``--help`` are the module's own.
"""

from __future__ import annotations

import os
import sys

from sda.layout import STAGE_ORDER

COMMANDS = {"run": "flows.pipeline", "relabel": "flows.relabel", "serve": "flows.serve", "check": "sda.domains.check"}


def module_for(argv: list[str]) -> tuple[str, list[str]]:
    """The module an ``sda`` command line runs and the arguments it passes on; SystemExit(2) with the
    usage for anything else."""
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]], argv[1:]
    if len(argv) >= 2 and argv[0] == "stage" and argv[1] in STAGE_ORDER:
        return f"tasks.{argv[1]}", argv[2:]
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0)
    if argv and argv[0] == "stage":
        problem = (f"unknown stage {argv[1]!r}" if len(argv) >= 2 else "which stage?") + f"; stages: {', '.join(STAGE_ORDER)}"
    else:
        problem = f"unknown command {argv[0]!r}" if argv else "a command is needed"
    print(f"sda: {problem}\n{__doc__}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    module, rest = module_for(sys.argv[1:])
    os.execv(sys.executable, [sys.executable, "-m", module, *rest])


if __name__ == "__main__":
    main()
