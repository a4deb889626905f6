#!/bin/sh
# The command of every DVC stage (dvc.yaml: `sh tasks/stage.sh <stage> [args]`): `python -m tasks.<stage>`
# with the python on PATH (the flow and `make repro` put the project's first), else this checkout's
# .venv (what `make install` creates: `.venv/bin/dvc repro` then runs from any shell), else python3.
# A python without the project's packages stops in tasks/__init__.py with what to do.
stage=$1
shift
if command -v python >/dev/null 2>&1; then
    exec python -m "tasks.$stage" "$@"
elif [ -x .venv/bin/python ]; then
    exec .venv/bin/python -m "tasks.$stage" "$@"
elif command -v python3 >/dev/null 2>&1; then
    exec python3 -m "tasks.$stage" "$@"
fi
echo "error: stage $stage: no python on PATH and no .venv in $(pwd): run \`make install\`, then \`make repro\` (or \`source .venv/bin/activate\` and \`dvc repro\`)" >&2
exit 127
