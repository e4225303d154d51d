"""A throw-away Spark standalone cluster on 127.0.0.1, for tests that need real executors.

``local[*]`` mode runs tasks in threads of one JVM, so it cannot show what happens when an executor
dies, when closures are shipped to another process, or when broadcasts cross the network. This
module starts a real standalone master and workers from the pip-installed pyspark (whose ``sbin``
has no ``start-master.sh``, so the daemons are launched through ``bin/spark-class``), waits until
every worker has registered, and tears everything down again.

Example
-------
>>> from tests.support.sparkcluster import start_standalone_cluster
>>> with start_standalone_cluster(n_workers=2) as cluster:           # doctest: +SKIP
...     spark = (SparkSession.builder.master(cluster.master_url)
...              .config(map=cluster.spark_conf()).getOrCreate())
...     cluster.kill_worker(0)                                        # simulate a lost node
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from predictd import localcluster
from predictd.localcluster import free_port

__all__ = ["FAST_JVM_OPTS", "Cluster", "ClusterError", "spark_home", "start_standalone_cluster"]

#: Test clusters run tiny jobs on a small shared machine, where JVM start-up and JIT warm-up
#: dominate: the C1 compiler alone and the serial collector start several times faster.
FAST_JVM_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xss4m"

_MASTER_CLASS = "org.apache.spark.deploy.master.Master"
_WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


class ClusterError(RuntimeError):
    """The cluster did not come up (or go down) in time; the message points at its logs."""


def spark_home() -> Path:
    """Directory of the installed pyspark, which doubles as SPARK_HOME (it ships bin/ and jars/)."""
    return Path(localcluster.spark_home())


def _get_json(url: str, timeout: float = 2.0) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _tail(path: Path, n_lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n_lines:])
    except OSError:
        return "(no log)"


@dataclass
class Cluster:
    """Handle on a running standalone cluster.

    Attributes
    ----------
    master_url : str
        ``spark://127.0.0.1:PORT``, to pass to ``SparkSession.builder.master``.
    webui_url : str
        The master's web UI; ``webui_url + "/json/"`` describes workers and applications.
    state_dir : pathlib.Path
        Logs (``master.log``, ``worker-<i>.log``) and the workers' work directories.
    """

    master_url: str
    webui_url: str
    state_dir: Path
    master: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)
    _owns_state_dir: bool = False
    _stopped: bool = False

    @property
    def master_pid(self) -> int:
        """Process id of the master JVM."""
        return self.master.pid

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the worker JVMs, in start order (dead ones included)."""
        return [p.pid for p in self.workers]

    def status(self) -> dict:
        """The master's JSON status (``workers``, ``aliveworkers``, ``activeapps``, ...).

        Returns
        -------
        dict
            Parsed ``/json/`` document; empty if the master does not answer.
        """
        return _get_json(self.webui_url + "/json/") or {}

    def alive_workers(self) -> int:
        """Number of workers the master currently considers ALIVE."""
        return int(self.status().get("aliveworkers", 0))

    def spark_conf(self, executor_memory: str = "512m") -> dict[str, str]:
        """Spark settings that make a driver in this process talk to the cluster over loopback.

        Parameters
        ----------
        executor_memory : str
            Heap of each executor; must fit in the worker's memory.

        Returns
        -------
        dict of str to str
            Includes the master URL, so ``SparkSession.builder.config(map=...)`` is enough.
        """
        return {
            "spark.master": self.master_url,
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.executor.memory": executor_memory,
            "spark.ui.showConsoleProgress": "false",
            "spark.driver.extraJavaOptions": FAST_JVM_OPTS,
            "spark.executor.extraJavaOptions": FAST_JVM_OPTS,
            # Wait for every worker's executor before the first stage, otherwise a fast job
            # may run entirely on whichever executor registered first.
            "spark.scheduler.minRegisteredResourcesRatio": "1.0",
            "spark.scheduler.maxRegisteredResourcesWaitingTime": "60s",
        }

    def kill_worker(self, index: int) -> None:
        """SIGKILL worker ``index`` together with its executors, like a lost spot node.

        Each worker leads its own process group, and the executors (and their Python workers)
        it forks stay in that group, so one ``killpg`` takes down the whole "node".

        Parameters
        ----------
        index : int
            Position in :attr:`worker_pids`.
        """
        proc = self.workers[index]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def wait_for_workers(self, n_workers: int, timeout: float = 60.0) -> None:
        """Block until the master reports exactly ``n_workers`` ALIVE workers.

        Parameters
        ----------
        n_workers : int
            Expected count (use it after :meth:`kill_worker` too: a killed worker is dropped
            after ``spark.worker.timeout``).
        timeout : float
            Seconds before :class:`ClusterError`.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.master.poll() is not None:
                raise ClusterError(
                    f"Spark master exited with code {self.master.returncode}; "
                    f"see {self.state_dir / 'master.log'}:\n{_tail(self.state_dir / 'master.log')}"
                )
            if self.alive_workers() == n_workers:
                return
            time.sleep(0.25)
        logs = "\n".join(
            f"--- worker-{i}.log\n{_tail(self.state_dir / f'worker-{i}.log')}"
            for i in range(len(self.workers))
        )
        raise ClusterError(
            f"{self.alive_workers()} of {n_workers} Spark workers registered with "
            f"{self.master_url} after {timeout:.0f} s; logs in {self.state_dir}\n{logs}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        """Stop workers (and their executors), then the master; idempotent.

        SIGTERM first so the JVMs run their shutdown hooks, SIGKILL for whatever is left
        after ``timeout`` seconds.
        """
        if self._stopped:
            return
        self._stopped = True
        procs = [*self.workers, self.master]
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # Executors outlive a SIGTERMed worker by a moment; clear the whole group.
            _signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for proc in procs:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        if self._owns_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _daemon_env(state_dir: Path, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    conf_dir = state_dir / "conf"
    conf_dir.mkdir(exist_ok=True)
    env.update(
        SPARK_HOME=str(home),
        # An empty conf dir keeps a user's spark-defaults.conf / spark-env.sh out of tests.
        SPARK_CONF_DIR=str(conf_dir),
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_LOCAL_HOSTNAME="127.0.0.1",
        SPARK_LOG_DIR=str(state_dir),
        SPARK_DAEMON_MEMORY="512m",
        # The REST submission server would grab port 6066 and clash between parallel clusters.
        SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false",
        # A killed worker should drop out of the master's view quickly in fault tests.
        SPARK_DAEMON_JAVA_OPTS=f"-Dspark.worker.timeout=10 {FAST_JVM_OPTS}",
        PYSPARK_PYTHON=sys.executable,
    )
    return env


def _launch(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        # start_new_session: the JVM becomes a process-group leader, so its executors can be
        # killed with it and a Ctrl-C in the test runner does not race our own shutdown.
        return subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_standalone_cluster(
    n_workers: int = 2,
    cores: int = 1,
    memory: str = "1g",
    state_dir: str | os.PathLike | None = None,
    timeout: float = 60.0,
) -> Cluster:
    """Start a standalone master and ``n_workers`` workers bound to 127.0.0.1.

    Parameters
    ----------
    n_workers : int
        Number of worker daemons (each gets one executor per application by default).
    cores : int
        Cores each worker offers.
    memory : str
        Memory each worker offers (JVM size syntax, e.g. ``"1g"``, ``"768m"``).
    state_dir : path-like, optional
        Where logs and work dirs go; a temporary directory (removed on stop) if omitted.
    timeout : float
        Seconds to wait for the master and for all workers to register.

    Returns
    -------
    Cluster
        Running cluster; call :meth:`Cluster.stop` (or use it as a context manager).

    Raises
    ------
    ClusterError
        If the master or the workers do not come up in time; nothing is left running then.
    """
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    owns = state_dir is None
    state = Path(tempfile.mkdtemp(prefix="predictd-sparkcluster-") if owns else state_dir)
    state.mkdir(parents=True, exist_ok=True)
    home = spark_home()
    spark_class = str(home / "bin" / "spark-class")
    env = _daemon_env(state, home)

    port, webui_port = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    webui_url = f"http://127.0.0.1:{webui_port}"
    master = _launch(
        [spark_class, _MASTER_CLASS, "--host", "127.0.0.1", "--port", str(port),
         "--webui-port", str(webui_port)],
        env, state / "master.log",
    )
    cluster = Cluster(master_url=master_url, webui_url=webui_url, state_dir=state, master=master,
                      _owns_state_dir=owns)
    try:
        deadline = time.monotonic() + timeout
        while cluster.status().get("status") != "ALIVE":
            if master.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(
                    f"Spark master did not become ALIVE on {master_url}; see "
                    f"{state / 'master.log'}:\n{_tail(state / 'master.log')}"
                )
            time.sleep(0.25)
        for i in range(n_workers):
            work_dir = state / f"work-{i}"
            work_dir.mkdir(exist_ok=True)
            cluster.workers.append(_launch(
                [spark_class, _WORKER_CLASS, "--host", "127.0.0.1", "--port", "0",
                 "--webui-port", str(free_port()), "--cores", str(cores), "--memory", memory,
                 "--work-dir", str(work_dir), master_url],
                env, state / f"worker-{i}.log",
            ))
        cluster.wait_for_workers(n_workers, timeout=max(1.0, deadline - time.monotonic()))
    except BaseException:
        # Leave no JVMs behind when startup fails (or the test is interrupted).
        if owns:
            cluster._owns_state_dir = False  # keep the logs the error message points at
        cluster.stop()
        raise
    return cluster
