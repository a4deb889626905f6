#!/usr/bin/env bash
# Create the project's virtual environment (if missing) and install the project into it, editable,
# with its dev extras:  tools/install.sh [VENV]   (default .venv; `make install` calls this)
#
# uv installs: ~105 s instead of pip's ~190 s on a 2-core machine (the CUDA build of torch is 5 GB
# of files, which uv unpacks in parallel and hard-links from its cache). uv reads no pip
# configuration, so the sources pip is configured with (`pip config list`: index-url,
# extra-index-url, find-links, constraint, cert, no-index; environment over install over global)
# are handed to it, and it resolves as pip does: the best version across all indexes. Like pip, it
# compiles the bytecode at install time: without it the first import of Prefect's server compiles
# hundreds of modules and its temporary API server misses its 20 s start-up timeout.
# SDA_INSTALLER=pip, or no uv wheel to be had, installs with pip as before.
set -eo pipefail
venv=${1:-.venv}
py=$venv/bin/python
quiet_pip() { grep -v "is ignored: it is neither a file nor a directory" || true; }

[ -x "$py" ] || { echo "creating $venv"; python3 -m venv "$venv"; }

if [ "${SDA_INSTALLER:-uv}" = uv ] && "$py" -m pip install -q --disable-pip-version-check uv 2>&1 | quiet_pip \
   && [ -x "$venv/bin/uv" ]; then
    echo "installing the project into $venv with uv (torch comes from local disk; ~2 min the first time)"
    mapfile -t args < <("$py" -m pip config list 2>/dev/null | "$py" -c '
import shlex, sys
rank = {":env:": 0, "install": 1, "global": 2}       # pip: environment > install > global
best = {}
for line in sys.stdin:
    key, _, value = line.strip().partition("=")
    section, _, name = key.rpartition(".")
    if section in rank and (name not in best or rank[section] < best[name][0]):
        best[name] = (rank[section], shlex.split(value)[0] if value else "")
get = lambda name: best.get(name, (0, ""))[1].split()
for url in get("index-url"):
    print(f"--default-index={url}")
for url in get("extra-index-url"):
    print(f"--index={url}")
for path in get("find-links"):
    print(f"--find-links={path}")
for path in get("constraint"):
    print(f"--constraint={path}")
if get("no-index") and get("no-index")[0].lower() in ("1", "true", "yes", "on"):
    print("--no-index")
for path in get("cert"):
    print(f"CERT={path}")
')
    cert=(); uv_args=()
    for a in "${args[@]}"; do
        case $a in CERT=*) cert=(SSL_CERT_FILE="${a#CERT=}");; *) uv_args+=("$a");; esac
    done
    env "${cert[@]}" "$venv/bin/uv" pip install --quiet --python "$py" --index-strategy unsafe-best-match --compile-bytecode \
        "${uv_args[@]}" -e '.[dev]'
else
    echo "installing the project into $venv with pip (torch comes from local disk; ~4 min the first time)"
    "$py" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | quiet_pip
    "$py" -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | quiet_pip
fi
"$py" -c "import sda, torch, diffusers, timm, webdataset, prefect, dvc"
