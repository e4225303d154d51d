#!/bin/bash
# EMR bootstrap action: install predictd and its Python dependencies on every node.
#
#   bootstrap.sh [--package SOURCE] [--python /usr/bin/python3.11]
#
# SOURCE is anything pip understands (a PyPI requirement such as `predictd==0.1.0`, a
# `git+https://...` URL) or an s3:// URI of a wheel, which is copied locally first.
# Runs as the `hadoop` user before the cluster's applications start; its stdout/stderr end up
# under LOG_URI/<cluster-id>/node/<instance-id>/bootstrap-actions/.
#
# pyspark is deliberately not pip-installed: EMR's own Spark puts its pyspark on PYTHONPATH, and
# a second copy from PyPI would be ~400 MB per node for nothing (or a version mismatch).
set -euo pipefail

PACKAGE="predictd"
PYTHON="/usr/bin/python3.11"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --package) PACKAGE="$2"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        *) echo "bootstrap.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

# EMR runs bootstrap actions as `hadoop` (passwordless sudo); allow running as root elsewhere.
SUDO=(sudo -E)
[[ "$(id -u)" == 0 ]] && SUDO=()

log() { echo "[predictd-bootstrap $(date -u +%H:%M:%S)] $*" >&2; }

pkg_install() {
    # AL2023 (EMR 7) has dnf; keep yum for older images.
    if command -v dnf >/dev/null; then "${SUDO[@]}" dnf install -y -q "$@"; else "${SUDO[@]}" yum install -y -q "$@"; fi
}

# 1. The interpreter. EMR 7 (AL2023) ships python3.9 as python3; python3.11 is one package away.
if ! command -v "$PYTHON" >/dev/null; then
    py_name="$(basename "$PYTHON")"                  # e.g. python3.11
    log "installing $py_name"
    pkg_install "$py_name" "$py_name-pip" "$py_name-devel"
fi
"$PYTHON" -m pip --version >/dev/null 2>&1 || pkg_install "$(basename "$PYTHON")-pip"

# Compilers and headers in case a dependency (pyBigWig) has no wheel for this platform.
pkg_install gcc zlib-devel libcurl-devel || log "build tools not installed; relying on wheels"
if [[ "$PACKAGE" == git+* ]]; then
    command -v git >/dev/null || pkg_install git
fi

# 2. The package source: pip cannot read s3:// itself.
WORK="$(mktemp -d /tmp/predictd-bootstrap.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
if [[ "$PACKAGE" == s3://* ]]; then
    log "fetching $PACKAGE"
    aws s3 cp --only-show-errors "$PACKAGE" "$WORK/"
    PACKAGE="$WORK/$(basename "$PACKAGE")"
fi

# 3. predictd itself without dependencies, then its declared dependencies minus pyspark.
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
PIP=("${SUDO[@]}" "$PYTHON" -m pip install --retries 5 --quiet)
log "installing predictd from $PACKAGE with $PYTHON"
"${PIP[@]}" --no-deps "$PACKAGE"

mapfile -t DEPS < <("$PYTHON" - <<'EOF'
import re
from importlib.metadata import requires

for req in requires("predictd") or []:
    name = re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0].lower()
    if name == "pyspark" or "extra ==" in req:
        continue
    print(req)
EOF
)
if [[ ${#DEPS[@]} -gt 0 ]]; then
    log "installing dependencies: ${DEPS[*]}"
    "${PIP[@]}" "${DEPS[@]}"
fi

# 4. Fail the bootstrap (and so the node) now rather than every task later.
"$PYTHON" -c 'import predictd, numpy, scipy, pyBigWig, pyarrow, boto3; print("predictd", predictd.__version__)'
log "done"
