#!/usr/bin/env bash
# Spark standalone cluster on 127.0.0.1 from the pip-installed pyspark, for trying predictd's
# distributed code paths (executors in separate JVMs/processes) on one machine.
#
#   infra/local_cluster.sh start [N_WORKERS=2] [CORES_PER_WORKER=1] [MEM_PER_WORKER=2g]
#   infra/local_cluster.sh status
#   infra/local_cluster.sh stop
#
# `start` prints the master URL (spark://127.0.0.1:PORT) as its last line, e.g.
#   predictd run --manifest m.tsv --genome hg38 --out out/ --master "$(infra/local_cluster.sh start 2 1 2g | tail -n1)"
#
# Environment:
#   PREDICTD_CLUSTER_DIR         state dir: pids, logs, work dirs  (default /tmp/predictd-cluster)
#   PREDICTD_MASTER_PORT         master RPC port  (default 7077; 0 = pick a free port)
#   PREDICTD_MASTER_WEBUI_PORT   master web UI port (default 8080; 0 = pick a free port)
#   PREDICTD_CLUSTER_TIMEOUT     seconds to wait for master and workers (default 90)
#   PYTHON                       interpreter whose pyspark is used (default python3)
#   SPARK_HOME                   override; default is the pyspark package directory
#
# pip's pyspark ships bin/spark-class but not sbin/start-master.sh, so the daemons are started
# with spark-class directly, each in its own session (setsid) so that `stop` can take down a
# worker together with the executors it forked.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
STATE_DIR="${PREDICTD_CLUSTER_DIR:-/tmp/predictd-cluster}"
TIMEOUT="${PREDICTD_CLUSTER_TIMEOUT:-90}"
MASTER_CLASS=org.apache.spark.deploy.master.Master
WORKER_CLASS=org.apache.spark.deploy.worker.Worker

die() { echo "local_cluster.sh: $*" >&2; exit 1; }

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

free_port() {
    "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_in_use() {
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
EOF
}

# Prints the master's JSON status field $1 (e.g. status, aliveworkers), or nothing if unreachable.
master_field() {
    local webui
    webui="$(cat "$STATE_DIR/webui_url" 2>/dev/null)" || return 0
    "$PYTHON" - "$webui/json/" "$1" <<'EOF' 2>/dev/null || true
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    print(json.load(r).get(sys.argv[2], ""))
EOF
}

pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

pidfiles() { ls "$STATE_DIR"/pids/*.pid 2>/dev/null || true; }

find_spark_home() {
    if [[ -n "${SPARK_HOME:-}" ]]; then
        echo "$SPARK_HOME"
    else
        "$PYTHON" -c 'import os, pyspark; print(os.path.dirname(os.path.realpath(pyspark.__file__)))' \
            || die "cannot import pyspark with $PYTHON (pip install pyspark, or set PYTHON/SPARK_HOME)"
    fi
}

# launch NAME CLASS ARGS...: detached daemon, pid in pids/NAME.pid, output in logs/NAME.log
launch() {
    local name="$1"; shift
    # setsid makes the JVM a session/process-group leader; spark-class execs java, so $! is the
    # JVM's pid and also the group id that `stop` signals.
    setsid "$SPARK_HOME/bin/spark-class" "$@" </dev/null >"$STATE_DIR/logs/$name.log" 2>&1 &
    echo $! >"$STATE_DIR/pids/$name.pid"
}

cmd_start() {
    local n_workers="${1:-2}" cores="${2:-1}" mem="${3:-2g}"
    [[ "$n_workers" =~ ^[1-9][0-9]*$ ]] || die "N_WORKERS must be a positive integer, got '$n_workers'"
    [[ "$cores" =~ ^[1-9][0-9]*$ ]] || die "CORES_PER_WORKER must be a positive integer, got '$cores'"
    [[ "$mem" =~ ^[1-9][0-9]*[mMgG]$ ]] || die "MEM must look like 512m or 2g, got '$mem'"
    command -v java >/dev/null || die "java not found on PATH (Spark needs a JRE 17+)"
    command -v setsid >/dev/null || die "setsid not found (util-linux)"

    for f in $(pidfiles); do
        if pid_alive "$(cat "$f")"; then
            die "a cluster is already running from $STATE_DIR ($(cat "$STATE_DIR/master_url" 2>/dev/null)); run '$0 stop' first"
        fi
    done
    rm -rf "$STATE_DIR/pids" "$STATE_DIR/conf"
    mkdir -p "$STATE_DIR/pids" "$STATE_DIR/logs" "$STATE_DIR/conf"

    SPARK_HOME="$(find_spark_home)"
    [[ -x "$SPARK_HOME/bin/spark-class" ]] || die "no bin/spark-class under SPARK_HOME=$SPARK_HOME"
    export SPARK_HOME
    export SPARK_CONF_DIR="$STATE_DIR/conf"   # keep a user's spark-env.sh/spark-defaults out
    export SPARK_LOCAL_IP=127.0.0.1 SPARK_LOCAL_HOSTNAME=127.0.0.1
    export SPARK_LOG_DIR="$STATE_DIR/logs"
    export SPARK_DAEMON_MEMORY="${SPARK_DAEMON_MEMORY:-512m}"
    # Master and worker daemons only coordinate (executors are separate JVMs): start-up speed
    # matters more to them than peak JIT performance.
    export SPARK_DAEMON_JAVA_OPTS="${SPARK_DAEMON_JAVA_OPTS:--XX:TieredStopAtLevel=1 -XX:+UseSerialGC}"
    # The REST submission server (port 6066) is not needed and would clash between clusters.
    export SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false ${SPARK_MASTER_OPTS:-}"
    export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$(command -v "$PYTHON")}"

    local port="${PREDICTD_MASTER_PORT:-7077}" webui_port="${PREDICTD_MASTER_WEBUI_PORT:-8080}"
    [[ "$port" == 0 ]] && port="$(free_port)"
    [[ "$webui_port" == 0 ]] && webui_port="$(free_port)"
    port_in_use "$port" && die "port $port is in use; set PREDICTD_MASTER_PORT (0 = any free port)"
    port_in_use "$webui_port" && die "port $webui_port is in use; set PREDICTD_MASTER_WEBUI_PORT (0 = any free port)"

    local master_url="spark://127.0.0.1:$port"
    echo "$master_url" >"$STATE_DIR/master_url"
    echo "http://127.0.0.1:$webui_port" >"$STATE_DIR/webui_url"

    launch master "$MASTER_CLASS" --host 127.0.0.1 --port "$port" --webui-port "$webui_port"

    local deadline=$((SECONDS + TIMEOUT))
    until [[ "$(master_field status)" == ALIVE ]]; do
        if ! pid_alive "$(cat "$STATE_DIR/pids/master.pid")" || ((SECONDS > deadline)); then
            tail -n 20 "$STATE_DIR/logs/master.log" >&2 || true
            cmd_stop >/dev/null 2>&1 || true
            die "master did not start; log: $STATE_DIR/logs/master.log"
        fi
        sleep 0.5
    done

    local i
    for ((i = 0; i < n_workers; i++)); do
        mkdir -p "$STATE_DIR/work/worker-$i"
        launch "worker-$i" "$WORKER_CLASS" --host 127.0.0.1 --port 0 --webui-port "$(free_port)" \
            --cores "$cores" --memory "$mem" --work-dir "$STATE_DIR/work/worker-$i" "$master_url"
    done

    until [[ "$(master_field aliveworkers)" == "$n_workers" ]]; do
        if ((SECONDS > deadline)); then
            tail -n 20 "$STATE_DIR"/logs/worker-*.log >&2 || true
            cmd_stop >/dev/null 2>&1 || true
            die "only $(master_field aliveworkers) of $n_workers workers registered within ${TIMEOUT}s; logs: $STATE_DIR/logs"
        fi
        sleep 0.5
    done

    echo "master web UI: $(cat "$STATE_DIR/webui_url")  workers: $n_workers x ${cores} cores x $mem  state: $STATE_DIR" >&2
    echo "$master_url"
}

cmd_stop() {
    local f pid name stopped=0
    for f in $(pidfiles); do
        pid="$(cat "$f")"
        # Signal the whole process group (the daemon and the executors it forked); the group id
        # is our own pid from setsid, so nothing outside this cluster is touched.
        pid_alive "$pid" && kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for f in $(pidfiles); do
        pid="$(cat "$f")"; name="$(basename "$f" .pid)"
        for _ in $(seq 1 60); do
            pid_alive "$pid" || break
            sleep 0.25
        done
        if pid_alive "$pid"; then
            echo "local_cluster.sh: $name (pid $pid) ignored SIGTERM; sending SIGKILL" >&2
        fi
        kill -KILL -- "-$pid" 2>/dev/null || true
        rm -f "$f"
        stopped=$((stopped + 1))
    done
    echo "stopped $stopped daemon(s) from $STATE_DIR"
}

cmd_status() {
    local f pid running=0 total=0
    if [[ -z "$(pidfiles)" ]]; then
        echo "no cluster in $STATE_DIR"
        return 3
    fi
    for f in $(pidfiles); do
        pid="$(cat "$f")"; total=$((total + 1))
        if pid_alive "$pid"; then
            running=$((running + 1))
            echo "$(basename "$f" .pid): running (pid $pid)"
        else
            echo "$(basename "$f" .pid): dead (pid $pid)"
        fi
    done
    echo "master: $(cat "$STATE_DIR/master_url")  web UI: $(cat "$STATE_DIR/webui_url")"
    echo "alive workers (per master): $(master_field aliveworkers)"
    [[ "$running" == "$total" ]] || return 1
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) usage ;;
esac
