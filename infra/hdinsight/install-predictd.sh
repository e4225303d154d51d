#!/bin/bash
# HDInsight script action: install predictd into its own Python environment on a node.
#
#   install-predictd.sh [--package SOURCE] [--python-version 3.10] [--prefix /opt/predictd]
#                       [--wrapper /usr/local/bin/predictd-python]
#
# SOURCE: a PyPI requirement (`predictd==0.1.0`), a `git+https://...` URL, an https URL of a wheel,
# or a wasb(s)://|abfs(s):// URI of a wheel on the cluster's storage (fetched with `hdfs dfs`).
#
# Runs as root on head and worker nodes (template.json wires it into both roles). The cluster's
# own Python (used by Ambari, Jupyter and HDInsight's tooling) is left untouched: predictd gets a
# separate conda environment (HDInsight images ship conda), or a venv if a python3.9+ exists but
# conda does not. /usr/local/bin/predictd-python runs that environment's interpreter; deploy.py
# points spark.pyspark.python at it for predictd's Livy batches only. pyspark itself is not
# installed: the cluster's Spark provides it on PYTHONPATH.
#
# Safe to run again (e.g. on nodes added by scaling): an existing environment is reused.
set -euo pipefail

PACKAGE="predictd"
PYTHON_VERSION="3.10"     # HDInsight 5.1 has Spark 3.3, which supports Python up to 3.10
PREFIX="/opt/predictd"
WRAPPER=/usr/local/bin/predictd-python
while [[ $# -gt 0 ]]; do
    case "$1" in
        --package) PACKAGE="$2"; shift 2 ;;
        --python-version) PYTHON_VERSION="$2"; shift 2 ;;
        --prefix) PREFIX="$2"; shift 2 ;;
        --wrapper) WRAPPER="$2"; shift 2 ;;
        *) echo "install-predictd.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

ENV_DIR="$PREFIX/env"
log() { echo "[install-predictd $(hostname -s) $(date -u +%H:%M:%S)] $*" >&2; }

# 1. The environment.
if [[ ! -x "$ENV_DIR/bin/python" ]]; then
    mkdir -p "$PREFIX"
    conda=""
    for candidate in /usr/bin/miniforge/bin/conda /usr/bin/anaconda/bin/conda "$(command -v conda || true)"; do
        if [[ -n "$candidate" && -x "$candidate" ]]; then conda="$candidate"; break; fi
    done
    if [[ -n "$conda" ]]; then
        log "creating conda env $ENV_DIR (python $PYTHON_VERSION) with $conda"
        "$conda" create --yes --quiet --prefix "$ENV_DIR" -c conda-forge "python=$PYTHON_VERSION" pip
    elif command -v "python$PYTHON_VERSION" >/dev/null; then
        log "no conda; creating venv $ENV_DIR with python$PYTHON_VERSION"
        "python$PYTHON_VERSION" -m venv "$ENV_DIR"
    else
        log "neither conda nor python$PYTHON_VERSION found; cannot create the predictd environment"
        exit 1
    fi
fi
PY="$ENV_DIR/bin/python"

# Headers in case pyBigWig has no wheel for this platform (best effort: wheels usually exist).
if command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc zlib1g-dev libcurl4-openssl-dev \
        >/dev/null 2>&1 || log "build packages not installed; relying on wheels"
fi

# 2. The package source.
WORK="$(mktemp -d /tmp/predictd-install.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
case "$PACKAGE" in
    wasb://*|wasbs://*|abfs://*|abfss://*)
        log "fetching $PACKAGE"
        hdfs dfs -copyToLocal "$PACKAGE" "$WORK/"
        PACKAGE="$WORK/$(basename "$PACKAGE")"
        ;;
esac

# 3. predictd without dependencies, then its dependencies minus pyspark.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
log "installing predictd from $PACKAGE into $ENV_DIR"
"$PY" -m pip install --quiet --retries 5 --upgrade pip
"$PY" -m pip install --quiet --retries 5 --no-deps --force-reinstall "$PACKAGE"
mapfile -t DEPS < <("$PY" - <<'EOF'
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
    "$PY" -m pip install --quiet --retries 5 "${DEPS[@]}"
fi

# 4. A stable interpreter path for spark.pyspark.python (a wrapper, not a symlink, so the
#    environment's prefix is found however it was created).
cat >"$WRAPPER" <<EOF
#!/bin/sh
exec "$PY" "\$@"
EOF
chmod 755 "$WRAPPER"

"$WRAPPER" -c 'import predictd, numpy, scipy, pyBigWig, pyarrow; print("predictd", predictd.__version__)'
log "done"
