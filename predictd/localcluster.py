"""A throw-away Spark standalone cluster (master + workers) on 127.0.0.1.

Used by ``predictd bench --workers`` to run the same job on 1, 2, … real executors. pip's pyspark
ships ``bin/spark-class`` but not ``sbin/start-master.sh``, so the daemons are started through
``spark-class`` directly; each daemon leads its own process group, so stopping a worker also
stops the executors (and their Python workers) it forked.

Examples
--------
>>> with start_cluster(n_workers=2) as cluster:                  # doctest: +SKIP
...     sc = predictd.spark.get_context(cluster.master_url, conf=cluster.conf())
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

from .errors import PredictdError

#: Short-lived benchmark daemons: the C1 JIT and the serial collector start much faster.
JVM_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def spark_home() -> str:
    """The pip-installed pyspark directory, which doubles as SPARK_HOME."""
    import pyspark
    return os.path.dirname(os.path.abspath(pyspark.__file__))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalCluster:
    """A running standalone cluster; use as a context manager or call :meth:`stop`."""

    master_url: str
    webui_url: str
    state_dir: str
    procs: list = field(default_factory=list)
    owns_state_dir: bool = True

    def status(self) -> dict:
        try:
            with urllib.request.urlopen(self.webui_url + "/json/", timeout=2) as r:
                return json.loads(r.read().decode())
        except (OSError, ValueError):
            return {}

    def conf(self, executor_memory: str = "1g", blas_threads: int | None = 1) -> dict:
        """Spark settings for a driver on this machine. ``blas_threads`` pins each executor's
        BLAS to that many threads, so one worker really uses one core when scaling is measured."""
        c = {"spark.executor.memory": executor_memory,
             "spark.scheduler.minRegisteredResourcesRatio": "1.0",
             "spark.scheduler.maxRegisteredResourcesWaitingTime": "60s",
             # the driver's and the executors' JVMs run short jobs beside the work on the
             # same cores: the optimising JIT's and the parallel collector's threads would
             # take more CPU from the Python workers than they give back
             "spark.driver.extraJavaOptions": JVM_OPTS,
             "spark.executor.extraJavaOptions": JVM_OPTS}
        if blas_threads:
            for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                c[f"spark.executorEnv.{var}"] = str(blas_threads)
        return c

    def stop(self) -> None:
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        for p in reversed(self.procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs = []
        if self.owns_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_cluster(n_workers: int = 2, cores: int = 1, memory: str = "2g",
                  timeout: float = 90.0) -> LocalCluster:
    """Start a master and ``n_workers`` workers (``cores`` each) bound to 127.0.0.1.

    Raises
    ------
    PredictdError
        If the daemons do not come up within ``timeout`` seconds (nothing is left running).
    """
    state = tempfile.mkdtemp(prefix="predictd-cluster-")
    home = spark_home()
    conf_dir = os.path.join(state, "conf")
    os.makedirs(conf_dir)
    env = dict(os.environ, SPARK_HOME=home, SPARK_CONF_DIR=conf_dir, SPARK_LOG_DIR=state,
               SPARK_LOCAL_IP="127.0.0.1", SPARK_LOCAL_HOSTNAME="127.0.0.1",
               SPARK_DAEMON_MEMORY="512m", SPARK_DAEMON_JAVA_OPTS=JVM_OPTS,
               SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false",
               PYSPARK_PYTHON=sys.executable)
    spark_class = os.path.join(home, "bin", "spark-class")
    port, ui = free_port(), free_port()
    cluster = LocalCluster(f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui}", state)

    def launch(args, log):
        with open(os.path.join(state, log), "wb") as out:
            cluster.procs.append(subprocess.Popen(
                [spark_class, *args], env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True))

    try:
        launch(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port",
                str(port), "--webui-port", str(ui)], "master.log")
        deadline = time.monotonic() + timeout
        while cluster.status().get("status") != "ALIVE":
            if time.monotonic() > deadline or cluster.procs[0].poll() is not None:
                raise PredictdError(f"Spark master did not start; see {state}/master.log")
            time.sleep(0.25)
        for i in range(n_workers):
            work = os.path.join(state, f"work-{i}")
            os.makedirs(work)
            launch(["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--port",
                    "0", "--webui-port", str(free_port()), "--cores", str(cores), "--memory",
                    memory, "--work-dir", work, cluster.master_url], f"worker-{i}.log")
        while int(cluster.status().get("aliveworkers", 0)) < n_workers:
            if time.monotonic() > deadline:
                raise PredictdError(f"only {cluster.status().get('aliveworkers', 0)} of "
                                    f"{n_workers} Spark workers registered; logs in {state}")
            time.sleep(0.25)
    except BaseException:
        cluster.owns_state_dir = False  # keep the logs the message points at
        cluster.stop()
        raise
    return cluster
