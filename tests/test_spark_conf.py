"""Which Spark settings predictd defaults to, by master: the UI off on this machine, on (with the
platform's event logs untouched) on a cluster. Pure functions, no Spark started; a standalone master nobody answers at is refused before
Spark starts."""

from __future__ import annotations

import pytest

from predictd.localcluster import free_port
from predictd.spark import is_loopback_master, master_defaults

LOOPBACK = ("local", "local[*]", "local[2]", "local-cluster[2,1,1024]",
            "spark://127.0.0.1:7077", "spark://localhost:7077", "spark://[::1]:7077",
            "spark://127.0.0.1:7077,127.0.0.1:7078")
CLUSTER = ("yarn", "k8s://https://10.0.0.1:6443", "spark://10.0.0.5:7077",
           "spark://master.example.org:7077", "spark://localhost.example.org:7077",
           "spark://127.0.0.1:7077,10.0.0.2:7077", "mesos://zk://10.0.0.3:2181/mesos")


@pytest.mark.parametrize("master", LOOPBACK)
def test_loopback_masters_keep_the_ui_off_and_bind_loopback_only(master):
    assert is_loopback_master(master)
    conf = master_defaults(master)
    assert conf["spark.ui.enabled"] == "false"
    assert conf["spark.driver.host"] == conf["spark.driver.bindAddress"] == "127.0.0.1"


@pytest.mark.parametrize("master", CLUSTER)
def test_cluster_masters_keep_the_ui_and_the_platforms_event_logs(master):
    assert not is_loopback_master(master)
    conf = master_defaults(master)
    # nothing that would switch the UI off, pin the driver to loopback, or move event logs away
    # from where the platform's history server reads them
    assert not any(k.startswith(("spark.ui.enabled", "spark.driver.", "spark.eventLog.",
                                 "spark.history.")) for k in conf)


def test_spark_console_progress_is_off_everywhere():
    # predictd draws its own progress (predictd.progress) from the status tracker
    for master in LOOPBACK + CLUSTER:
        assert master_defaults(master)["spark.ui.showConsoleProgress"] == "false"


def test_a_loopback_clusters_fast_jvm_options_keep_the_quiet_logging():
    from predictd.localcluster import JVM_OPTS, LocalCluster
    from predictd.spark import with_java_option
    conf = LocalCluster("spark://127.0.0.1:7077", "http://127.0.0.1:8080", "/nonexistent").conf()
    # the driver's and the executors' JVMs share the cores with the work they run
    assert conf["spark.driver.extraJavaOptions"] == conf["spark.executor.extraJavaOptions"] \
        == JVM_OPTS
    quiet = "-Dlog4j2.configurationFile=file:/q.properties"
    merged = with_java_option({**conf, "spark.app.name": "x"}, quiet, "log4j2.configurationFile")
    for k in ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions"):
        assert merged[k] == f"{quiet} {JVM_OPTS}"
    assert merged["spark.app.name"] == "x"
    # a caller's own logging configuration wins; no options given: none added
    own = {"spark.executor.extraJavaOptions": "-Dlog4j2.configurationFile=file:/mine"}
    assert with_java_option(own, quiet, "log4j2.configurationFile") == own
    assert with_java_option({}, quiet, "log4j2.configurationFile") == {}


def test_a_standalone_master_nobody_answers_is_refused_in_one_line():
    """Spark would retry for a minute and fail the first job with a Java stack; the check
    names the address at once. A master listening at any of its addresses passes."""
    import socket
    import time

    from predictd.errors import PredictdError
    from predictd.spark import check_master_reachable, master_addresses

    dead = free_port()             # a port nothing listens on
    t0 = time.monotonic()
    with pytest.raises(PredictdError, match=rf"spark://127.0.0.1:{dead}: nothing answers at "
                                            rf"127.0.0.1:{dead}: Connection refused"):
        check_master_reachable(f"spark://127.0.0.1:{dead}")
    assert time.monotonic() - t0 < 5
    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))
        live.listen()
        port = live.getsockname()[1]
        check_master_reachable(f"spark://127.0.0.1:{port}")
        check_master_reachable(f"spark://127.0.0.1:{dead},127.0.0.1:{port}")   # a standby
    for master in ("local[2]", "yarn", "local-cluster[2,1,1024]"):
        check_master_reachable(master)   # not a standalone master: nothing to check
    assert master_addresses("spark://h") == [("h", 7077)]
    with pytest.raises(PredictdError, match="'x' is not a port"):
        master_addresses("spark://h:x")


def test_run_with_an_unreachable_master_writes_nothing(tmp_path, write_small_run_inputs):
    """The command in a process of its own, as a user runs it: a test process's running JVM
    would hand a new SparkConf the master of the context it already has."""
    import subprocess
    import sys

    inp = write_small_run_inputs(tmp_path / "in")
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "predictd", "run", "-m", str(inp.manifest), "-g",
                        str(inp.sizes), "-o", str(tmp_path / "o"), "--master",
                        f"spark://127.0.0.1:{port}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [
        f"predictd: error: Spark master spark://127.0.0.1:{port}: nothing answers at "
        f"127.0.0.1:{port}: Connection refused (is the master running? --master or "
        "$PREDICTD_SPARK_MASTER)"]
    assert not (tmp_path / "o").exists()
