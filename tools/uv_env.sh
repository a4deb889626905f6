# Shared by tools/install.sh and tools/lock.sh (sourced, with $py set): pip's configured sources as uv
# options, and uv itself in $venv/.tools (outside the environment it manages).

# pip's configured sources as uv options, one per line (CERT=<file> for the certificate bundle)
pip_sources() {
    "$py" -m pip config list 2>/dev/null | "$py" -c '
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
if get("no-index") and get("no-index")[0].lower() in ("1", "true", "yes", "on"):
    print("--no-index")
for path in get("cert"):
    print(f"CERT={path}")
'
}

# uv_sources: the arrays `cert` (SSL_CERT_FILE=... for env) and `uv_args` (the sources) from pip_sources
uv_sources() {
    mapfile -t args < <(pip_sources)
    cert=(); uv_args=()
    for a in "${args[@]}"; do
        case $a in CERT=*) cert=(SSL_CERT_FILE="${a#CERT=}");; *) uv_args+=("$a");; esac
    done
}

# ensure_uv VENV: uv $UV_VERSION in VENV/.tools (pip --target), unless there already; true if it is there
UV_VERSION=0.13.9
ensure_uv() {
    local uv=$1/.tools/bin/uv
    if [ -x "$uv" ] && "$uv" --version 2>/dev/null | grep -q " $UV_VERSION"; then return 0; fi
    rm -rf "$1/.tools"
    "$py" -m pip install -q --disable-pip-version-check --target "$1/.tools" "uv==$UV_VERSION" 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" || true
    [ -x "$uv" ]
}
