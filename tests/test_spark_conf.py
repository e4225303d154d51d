"""Which Spark settings predictd defaults to, by master: the UI off on this machine, on (with the
platform's event logs untouched) on a cluster. Pure functions, no Spark started."""

from __future__ import annotations

import pytest

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
