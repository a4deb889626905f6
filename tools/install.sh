#!/usr/bin/env bash
# Install the locked environment into VENV (created if missing), then the project itself, editable:
#
#   tools/install.sh [VENV] [run|dev]     (default: .venv run; `make install` / `make install-dev`)
#
# run: requirements.lock, what the pipeline, the flows and the service need; dev: requirements-dev.lock,
# the same versions plus the tests' and the docs' tools. Both are exact: every package pinned with its
# hashes (`make lock` writes them from pyproject.toml), and the venv ends up with what the lock says and
# nothing else (uv pip sync removes what the lock does not name). A second call with unchanged inputs
# returns at once; `run` is also satisfied by an up-to-date `dev` install (same versions, and more).
#
# uv does the work (~1 min instead of pip's ~4: it unpacks torch's 5 GB in parallel and hard-links
# from its cache); it lives in VENV/.tools, outside the environment it installs, so the lock and
# `pip freeze` agree. uv reads no pip configuration, so the sources pip is configured with (index-url,
# extra-index-url, find-links, cert, no-index; environment over install over global) are handed to it.
# Several indexes may each hold some releases of a package (a partial local mirror beside PyPI), so
# each pinned version is looked up index by index (unsafe-first-match); that is safe here because a
# file is installed only if its hash is one the lock names. SDA_INSTALLER=pip installs with pip
# (--require-hashes) instead; pip adds what the lock names but, unlike uv, removes nothing else.
set -eo pipefail
venv=${1:-.venv}
kind=${2:-run}
case $kind in
    run) lock=requirements.lock;;
    dev) lock=requirements-dev.lock;;
    *) echo "tools/install.sh: unknown kind '$kind' (run | dev)" >&2; exit 2;;
esac
cd "$(dirname "$0")/.."
[ -f "$lock" ] || { echo "tools/install.sh: $lock is missing: run 'make lock'" >&2; exit 2; }
py=$venv/bin/python
stamp=$venv/.installed

digest() { cat "$1" pyproject.toml tools/install.sh tools/uv_env.sh | sha256sum | cut -c1-16; }
want="$kind $(digest "$lock")"
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$have" = "$want" ] || { [ "$kind" = run ] && [ "$have" = "dev $(digest requirements-dev.lock)" ]; }; then
    exit 0
fi
rm -f "$stamp"

quiet_pip() { grep -v "is ignored: it is neither a file nor a directory" || true; }
[ -x "$py" ] || { echo "creating $venv"; python3 -m venv "$venv"; }
source tools/uv_env.sh

uv=$venv/.tools/bin/uv
if [ "${SDA_INSTALLER:-uv}" = uv ] && ensure_uv "$venv"; then
    echo "installing $lock into $venv with uv (~1 min the first time)"
    uv_sources
    # no bytecode compiled here: compiling all 17,600 modules took 23 s of a 25 s install on 2 cores, where
    # the pipeline imports a few thousand of them; Python writes those as it first imports them (the
    # Makefile lets it: it drops PYTHONDONTWRITEBYTECODE), starting with the check below
    env "${cert[@]}" "$uv" pip sync --quiet --python "$py" --require-hashes --index-strategy unsafe-first-match \
        "${uv_args[@]}" "$lock"
    env "${cert[@]}" "$uv" pip install --quiet --python "$py" --no-deps --index-strategy unsafe-first-match \
        "${uv_args[@]}" -e .
else
    echo "installing $lock into $venv with pip (~4 min the first time)"
    "$py" -m pip install -q --disable-pip-version-check --require-hashes -r "$lock" 2>&1 | quiet_pip
    "$py" -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | quiet_pip
fi
# the check writes the bytecode of what every stage and the flow import, whatever the caller's environment says
env -u PYTHONDONTWRITEBYTECODE "$py" -c "import sda, torch, torchvision, diffusers, timm, webdataset, prefect, dvc.cli"
echo "$want" > "$stamp"
