#!/usr/bin/env bash
# Write the lock files from pyproject.toml (`make lock`; `make lock UPGRADE=1` takes the newest releases):
#
#   requirements-dev.lock   the dependencies and the [dev] extra, every transitive package pinned with hashes
#   requirements.lock       the dependencies alone, at the versions of requirements-dev.lock
#
# Without UPGRADE the versions already locked are kept where pyproject.toml still admits them, so adding
# one dependency adds it (and what it needs) and changes nothing else. The resolution is this machine's:
# CPython 3.11 on Linux x86_64, where PyPI's torch wheel is the CUDA build (it runs on a CPU too), from
# 3.11.0 up (--python-version): what only the older 3.11 releases need is locked too (redis needs async-timeout
# below 3.11.3: without it Debian 12's python3, 3.11.2, stopped in the flow's first import).
# Both files are checked against pyproject.toml by tests/unit/test_lock.py.
set -eo pipefail
venv=${1:-.venv}
cd "$(dirname "$0")/.."
py=$venv/bin/python
uv=$venv/.tools/bin/uv
[ -x "$py" ] || { echo "creating $venv"; python3 -m venv "$venv"; }
source tools/uv_env.sh
ensure_uv "$venv" || { echo "tools/lock.sh: could not install uv into $venv/.tools" >&2; exit 2; }
uv_sources
upgrade=(); [ -n "${UPGRADE:-}" ] && upgrade=(--upgrade)
compile() {
    env "${cert[@]}" "$uv" pip compile --quiet --python "$py" --python-version 3.11.0 --generate-hashes --index-strategy unsafe-first-match \
        --custom-compile-command "make lock" "${uv_args[@]}" "$@"
}
# each version is chosen once, here (index by index, as tools/install.sh looks them up), and written
# down with its hashes; installs take exactly that version and check every file against them
compile "${upgrade[@]}" pyproject.toml --extra dev -o requirements-dev.lock
pins=$(mktemp); trap 'rm -f "$pins"' EXIT
grep -E '^[A-Za-z0-9]' requirements-dev.lock | cut -d' ' -f1 > "$pins"
compile pyproject.toml -c "$pins" -o requirements.lock
sed -i "s|^    #   -c $pins$|    #   requirements-dev.lock|" requirements.lock
echo "requirements-dev.lock: $(grep -cE '^[A-Za-z0-9]' requirements-dev.lock) packages;" \
     "requirements.lock: $(grep -cE '^[A-Za-z0-9]' requirements.lock)"
