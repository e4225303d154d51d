"""The only place a SparkSession is made, and the Spark side of the training backend.

Users never handle RDDs: stages receive a SparkContext from :func:`get_context` and use
:func:`map_tasks` (an ordered, deterministic ``parallelize → map → collect``) or the
:class:`SparkBackend` of the training loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
from collections import OrderedDict

from .errors import PredictdError

_CONTEXT = None
log = logging.getLogger("predictd.spark")


def get_context(master: str | None = None, app_name: str = "predictd", conf: dict | None = None):
    """Create (once per process) or return the SparkContext.

    ``master`` defaults to ``$PREDICTD_SPARK_MASTER`` or ``local[*]``; under spark-submit the
    master given to spark-submit wins.
    """
    global _CONTEXT
    if _CONTEXT is not None and _CONTEXT._jsc is not None and not _CONTEXT._jsc.sc().isStopped():
        if master and master != _CONTEXT.master:
            log.warning("a Spark context on %s is already running in this process; master %s "
                        "is not used (predictd.spark.stop_context() first)", _CONTEXT.master,
                        master)
        return _CONTEXT
    _CONTEXT = None  # none yet, or stopped (e.g. its master went away): make a new one
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark import SparkConf, SparkContext

    sconf = SparkConf().setAppName(app_name)
    # under spark-submit the JVM was started for us, with the user's --master; a JVM this
    # process started for an earlier (since stopped) context holds that context's settings
    # as system properties, which a new SparkConf reads back: they are not the user's choice
    own_jvm = "PYSPARK_GATEWAY_PORT" not in os.environ
    submitted = not own_jvm and "spark.master" in dict(sconf.getAll())
    if not submitted:
        sconf.setMaster(master or os.environ.get("PREDICTD_SPARK_MASTER") or "local[*]")
    check_master_reachable(sconf.get("spark.master", ""))
    defaults = {
        "spark.driver.memory": os.environ.get("PREDICTD_DRIVER_MEMORY", "4g"),
        "spark.python.worker.reuse": "true",
        "spark.task.maxFailures": "4",
        "spark.rdd.compress": "false",
        "spark.driver.maxResultSize": "8g",
        # executor <-> Python worker over Unix domain sockets: lower per-job latency than
        # loopback TCP (docs/performance.md; Spark >= 4.1, older Spark ignores the key)
        "spark.python.unix.domain.socket.enabled": "true",
    }
    # one BLAS thread per task slot: Spark already runs a Python worker per core, and each
    # worker's OpenBLAS spinning up a thread per core as well oversubscribes the machine
    task_cpus = sconf.get("spark.task.cpus", "1")
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        defaults[f"spark.executorEnv.{var}"] = task_cpus
    m = sconf.get("spark.master", "")
    defaults.update(master_defaults(m))
    if is_loopback_master(m):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Spark leaves its Unix domain socket files behind in java.io.tmpdir (one per run on
        # a laptop): on this machine they go in a directory of the process's, removed when it
        # exits
        defaults["spark.python.unix.domain.socket.dir"] = _socket_dir()
    log4j = os.path.join(os.path.dirname(__file__), "data", "log4j2.properties")
    if os.path.exists(log4j) and not os.environ.get("PREDICTD_DEBUG"):
        opt = f"-Dlog4j2.configurationFile=file:{log4j}"
        defaults["spark.driver.extraJavaOptions"] = opt
        defaults["spark.executor.extraJavaOptions"] = opt
        conf = with_java_option(conf or {}, opt, "log4j2.configurationFile")
    for k, v in {**defaults, **(conf or {})}.items():
        # a setting spark-submit was given wins over ours; our own JVM's are only an earlier
        # context's
        if own_jvm or not sconf.contains(k):
            sconf.set(k, v)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    gateway = None
    if SparkContext._gateway is None and SparkContext._active_spark_context is None:
        gateway = _quiet_gateway(sconf)
    _CONTEXT = (SparkContext(conf=sconf, gateway=gateway) if gateway is not None
                else SparkContext.getOrCreate(sconf))
    _CONTEXT.setLogLevel(os.environ.get("PREDICTD_SPARK_LOG_LEVEL", "ERROR"))
    return _CONTEXT


def with_java_option(conf: dict, opt: str, key: str) -> dict:
    """``conf`` with ``opt`` put before the driver's and the executors' JVM options it gives,
    unless they already set ``key`` (a ``-D`` property): a caller's options (a loopback
    cluster's faster JIT) keep predictd's quiet logging.

    >>> with_java_option({"spark.executor.extraJavaOptions": "-Xss4m"}, "-Dq=1", "q")
    {'spark.executor.extraJavaOptions': '-Dq=1 -Xss4m'}
    """
    out = dict(conf)
    for k in ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions"):
        given = out.get(k)
        if given and f"-D{key}=" not in given:
            out[k] = f"{opt} {given}"
    return out


def is_loopback_master(master: str) -> bool:
    """True for masters that run on this machine only: ``local``, ``local[N]``,
    ``local-cluster[...]`` and a standalone master on a loopback address (a laptop, the tests).

    >>> [is_loopback_master(m) for m in ("local[*]", "spark://127.0.0.1:7077", "yarn")]
    [True, True, False]
    """
    if master.startswith("local"):
        return True
    if not master.startswith("spark://"):
        return False  # yarn, k8s://..., mesos://...: a cluster
    # spark://host:port, or spark://h1:p1,h2:p2 with standby masters: loopback only if all are
    return all(_is_loopback_host(host) for host, _ in master_addresses(master))


def master_addresses(master: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a standalone master URL (``spark://h:p`` or ``spark://h1:p1,
    h2:p2`` with standby masters; port 7077 when omitted); [] for any other master.

    >>> master_addresses("spark://10.0.0.1:7077,[::1]")
    [('10.0.0.1', 7077), ('::1', 7077)]
    >>> master_addresses("yarn")
    []
    """
    if not master.startswith("spark://"):
        return []
    out = []
    for hostport in master[len("spark://"):].rstrip("/").split(","):
        if hostport.startswith("["):
            host, _, rest = hostport[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        elif hostport.count(":") == 1:
            host, port = hostport.split(":")
        else:
            host, port = hostport, ""
        try:
            out.append((host, int(port) if port else 7077))
        except ValueError:
            raise PredictdError(f"Spark master {master}: {port!r} is not a port") from None
    return out


def check_master_reachable(master: str, timeout: float = 5.0) -> None:
    """Refuse a standalone master none of whose addresses accepts a connection, in one line:
    Spark itself retries for a minute, then fails the first job with a Java stack trace."""
    addresses = master_addresses(master)
    reasons = []
    for host, port in addresses:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return
        except OSError as e:
            reasons.append(f"{host}:{port}: {e.strerror or e.__class__.__name__}")
    if addresses:
        raise PredictdError(f"Spark master {master}: nothing answers at "
                            + "; ".join(reasons) + " (is the master running? --master or "
                            "$PREDICTD_SPARK_MASTER)")


def _is_loopback_host(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


def master_defaults(master: str) -> dict:
    """Spark settings that depend on where the job runs (user and spark-defaults settings win).

    On a loopback master (tests, laptops) the Spark UI is off and the driver binds and advertises
    127.0.0.1 only. On any other master (YARN on EMR or HDInsight, a standalone cluster,
    Kubernetes) the UI stays on, since it is how users watch a cluster job, and the event log
    settings are left to the platform: its spark-defaults point them where its history server
    reads (EMR: ``infra/emr/launch.py`` sets them; HDInsight: its own ``spark2-events`` folder).
    Spark's console progress bar is off everywhere: predictd prints its own
    (:mod:`predictd.progress`).
    """
    conf = {"spark.ui.showConsoleProgress": "false"}
    if is_loopback_master(master):
        # a laptop or a loopback test cluster: never bind or advertise another interface
        conf.update({"spark.ui.enabled": "false",
                     "spark.driver.host": "127.0.0.1",
                     "spark.driver.bindAddress": "127.0.0.1"})
    return conf


# Start-up chatter of the driver JVM that is not about the user's run: Spark 4 always loads the
# incubating vector module, and the JVM announces it on stderr before any logging is set up.
_JVM_NOISE = (b"WARNING: Using incubator modules:",)


def _quiet_gateway(sconf):
    """Launch the driver JVM with its stderr passed through a filter that drops
    :data:`_JVM_NOISE`, so a failed run still prints one line; None under spark-submit (the
    JVM is already running)."""
    import subprocess
    import threading

    from pyspark.java_gateway import launch_gateway
    if "PYSPARK_GATEWAY_PORT" in os.environ:
        return None
    gateway = launch_gateway(sconf, popen_kwargs={"stderr": subprocess.PIPE})
    proc = getattr(gateway, "proc", None)
    if proc is None or proc.stderr is None:
        return gateway

    def pump(stream):
        # straight to file descriptor 2, where the JVM would have written: no Python-level
        # stream (possibly replaced or closed by then) in the way
        for line in iter(stream.readline, b""):
            if not line.startswith(_JVM_NOISE):
                try:
                    os.write(2, line)
                except OSError:
                    pass

    threading.Thread(target=pump, args=(proc.stderr,), daemon=True,
                     name="predictd-jvm-stderr").start()
    return gateway


def stop_context() -> None:
    """Stop this process's context; the next :func:`get_context` makes a new one (with the
    master it is given). The sockets' directory stays until the process exits: the JVM, which
    outlives the context, keeps its path."""
    global _CONTEXT
    if _CONTEXT is not None:
        _CONTEXT.stop()
        _CONTEXT = None


#: The directory of this process's Spark Unix domain sockets (loopback masters), if made
_SOCKET_DIR: str | None = None


def _socket_dir() -> str:
    global _SOCKET_DIR
    if _SOCKET_DIR is None:
        import atexit
        import tempfile
        # a socket's path has at most 107 bytes, and Spark's names take 43 of them
        base = tempfile.gettempdir()
        if len(base) > 48 and os.access("/tmp", os.W_OK):
            base = "/tmp"
        _SOCKET_DIR = tempfile.mkdtemp(prefix="predictd-sock-", dir=base)
        atexit.register(_remove_socket_dir)
    return _SOCKET_DIR


def _remove_socket_dir() -> None:   # at exit
    if _SOCKET_DIR is not None:
        import shutil
        shutil.rmtree(_SOCKET_DIR, ignore_errors=True)


def default_parallelism(sc) -> int:
    return max(1, int(sc.defaultParallelism))


#: len(sys.modules) at this Python worker's last :func:`freeze_imports`
_FROZEN_AT = 0


def freeze_imports() -> None:
    """In a Spark task: move what this Python worker holds (the imported modules: numpy's,
    pyarrow's, predictd's) out of the cyclic garbage collector's reach (``gc.freeze``), when a
    module was imported since the last time. PySpark's daemon runs a full collection after
    every task of a reused worker, which otherwise walks all of them each time: 30–40 ms of
    CPU per task here against 7 ms frozen, between a worker's tasks. Objects still free
    when their last reference goes; only a reference cycle frozen here and dropped later
    stays until the worker exits, and predictd's payloads (arrays, tuples, models) hold none."""
    global _FROZEN_AT
    if len(sys.modules) != _FROZEN_AT:
        import gc
        gc.freeze()
        _FROZEN_AT = len(sys.modules)


def _task_start() -> None:
    """What every Spark task does first in its Python worker: :func:`freeze_imports`, and
    :func:`predictd.allocator.configure` (once per worker)."""
    from .allocator import configure
    freeze_imports()
    configure()


def _guarded(fn, item, payload):
    """Run a task; a PredictdError travels back as a value so the driver can print its one
    line (instead of a Java stack trace) and Spark does not retry a hopeless input."""
    _task_start()
    try:
        return ("ok", fn(item, payload))
    except PredictdError as e:
        return ("error", str(e))


def map_tasks(sc, fn, items: list, payload=None, n_slices: int | None = None,
              desc: str | None = None, unit: str = "item", threads: int = 1,
              cost: list | None = None) -> list:
    """Run ``fn(item, payload)`` for every item as Spark tasks; results in item order.

    ``sc=None`` runs the tasks in this process (notebooks, tests, benchmarks). The payload is
    broadcast once (factors, configs); items are small task descriptions. A
    :class:`PredictdError` raised by a task is re-raised on the driver with its message.

    With ``desc`` (e.g. ``"write"``) the stage shows its progress (:mod:`predictd.progress`):
    per finished item in this process; on Spark per finished task, read from Spark's status
    tracker, and the Spark UI lists the job under ``desc``.

    ``threads``: in this process, run the items on up to that many threads (0: every usable
    core), each with one BLAS thread — for tasks whose work is numpy's, which releases the GIL.

    ``cost`` (a number per item, e.g. its bins) starts the costliest items first, so that a
    few unequal tasks on a few cores do not end with one core working alone (a stage's last
    block is often short). Results stay in item order whatever the order of work.
    """
    from .progress import Progress, item_of
    if not items:
        return []
    order = (list(range(len(items))) if cost is None
             else sorted(range(len(items)), key=lambda i: -cost[i]))  # stable: ties in order
    if sc is None:
        from .solvers.fit import thread_map
        with Progress(desc or "", len(items), unit, mode=None if desc else "off") as bar, \
                item_of(bar):
            done = thread_map(lambda i: fn(items[i], payload), order, threads,
                              done=bar.update)
        out = [None] * len(items)
        for i, r in zip(order, done):
            out[i] = r
        return out
    bc = sc.broadcast(payload)
    n = min(n_slices or len(items), len(items))
    indexed = [(i, items[i]) for i in order]
    if n < len(items):
        # parallelize cuts the list into contiguous slices: deal the items round-robin so
        # every slice gets a share of the (often size-sorted) items
        indexed = [indexed[i] for s in range(n) for i in range(s, len(indexed), n)]
    try:
        with _job_progress(sc, desc, n, unit if n == len(items) else "task"):
            out = (sc.parallelize(indexed, n)
                   .map(lambda it: (it[0], _guarded(fn, it[1], bc.value)))
                   .collect())
    finally:
        bc.unpersist()
    out.sort(key=lambda t: t[0])
    errors = [r[1] for _, r in out if r[0] == "error"]
    if errors:
        raise PredictdError(errors[0])
    return [r[1] for _, r in out]


#: How often the driver asks Spark's status tracker how far a stage is (seconds).
POLL_SECONDS = 1.0
_JOB_PROPERTIES = ("spark.jobGroup.id", "spark.job.description")
_job_groups = iter(range(1, 1 << 62))


def group_tasks(tracker, group: str) -> tuple[int, int]:
    """(finished, all) tasks of the jobs of a job group, from a Spark ``StatusTracker``.

    Stages Spark no longer keeps (long finished) count as absent: the totals cover the stages
    it still reports.
    """
    done = total = 0
    for job_id in tracker.getJobIdsForGroup(group):
        job = tracker.getJobInfo(job_id)
        for stage_id in (job.stageIds if job is not None else ()):
            stage = tracker.getStageInfo(stage_id)
            if stage is not None:
                done += stage.numCompletedTasks
                total += stage.numTasks
    return done, total


@contextlib.contextmanager
def _job_progress(sc, desc: str | None, n_tasks: int, unit: str):
    """Name the Spark jobs started in the block ``desc`` (a job group: the Spark UI shows the
    description) and, while they run, feed a :class:`predictd.progress.Progress` from Spark's
    status tracker in a driver thread."""
    if not desc:
        yield
        return
    from .progress import Progress
    group = f"predictd-{next(_job_groups)}"
    saved = {k: sc.getLocalProperty(k) for k in _JOB_PROPERTIES}
    sc.setJobGroup(group, desc)
    stop = threading.Event()
    bar = Progress(desc, n_tasks, unit)
    tracker = sc.statusTracker()

    def poll():
        while not stop.wait(POLL_SECONDS):
            try:
                done, total = group_tasks(tracker, group)
            except Exception:  # noqa: BLE001 - the context stopping under us: just stop
                return
            if total:
                bar.set_done(done, total)

    thread = threading.Thread(target=poll, daemon=True, name="predictd-progress")
    if bar.mode != "off":
        thread.start()
    try:
        yield
        stop.set()
        if thread.is_alive():
            thread.join()
        bar.set_done(bar.total)
    finally:
        stop.set()
        bar.close()
        for k, v in saved.items():
            sc.setLocalProperty(k, v)


# --------------------------------------------------------------------------- training backend
# Training shards are immutable; each Python worker keeps the ones it has loaded so that an
# iteration does not ship the training tensor through the JVM again (LRU, bounded in bytes).
_SHARD_CACHE: "OrderedDict[tuple, object]" = OrderedDict()
_SHARD_CACHE_BYTES = int(os.environ.get("PREDICTD_SHARD_CACHE_MB", "8192")) * 2**20


def _cached_shard(loader, key):
    # every training task starts here
    _task_start()
    hit = _SHARD_CACHE.get(key)
    if hit is not None:
        _SHARD_CACHE.move_to_end(key)
        return hit
    shard = loader(*key)
    _SHARD_CACHE[key] = shard
    total = sum(s.nbytes for s in _SHARD_CACHE.values())
    while total > _SHARD_CACHE_BYTES and len(_SHARD_CACHE) > 1:
        _, old = _SHARD_CACHE.popitem(last=False)
        total -= old.nbytes
    return shard


class SparkBackend:
    """The training backend of :mod:`predictd.solvers.fit` on Spark.

    Shards are loaded by ``loader(*key)`` for each key of ``shard_keys`` inside the executors
    (from the training-subset Parquet files), cached per Python worker. SGD states (each shard's
    G rows and their Adam moments) live in a persisted RDD, one element per shard.

    Every 10 iterations the state is locally checkpointed (lineage cut, blocks kept on two
    executors). A lost executor (a reclaimed spot node) is recomputed from lineage, so
    everything a state still in use derives from stays available: the checkpoint it starts
    from (unpersisted, it would leave "checkpoint block not found" as the only answer) and the
    broadcast payloads of the iterations since (unpersisted, the Python worker finds its
    broadcast file gone). Both are released once no state in use needs them.
    """

    def __init__(self, sc, loader, shard_keys: list[tuple]):
        self.sc = sc
        self.loader = loader
        self.keys = list(shard_keys)
        self.n = len(self.keys)
        self.state_rdd = None
        self._iter = 0
        # id -> (state RDD in use, iteration of the checkpoint its lineage starts at; -1: init)
        self._live: dict[int, tuple] = {}
        self._checkpoints: dict[int, object] = {}  # iteration -> checkpointed state RDD
        self._broadcasts: list[tuple] = []          # (iteration, payload broadcast)

    def _index_rdd(self):
        return self.sc.parallelize(list(enumerate(self.keys)), self.n)

    def map(self, fn, payload):
        bc = self.sc.broadcast(payload)
        loader = self.loader
        try:
            out = self._index_rdd().map(
                lambda ik: (ik[0], fn(_cached_shard(loader, ik[1]), bc.value, ik[0]))).collect()
        finally:
            bc.unpersist()
        out.sort(key=lambda t: t[0])
        return [r for _, r in out]

    def init_state(self, fn, payload):
        bc = self.sc.broadcast(payload)
        loader = self.loader
        rdd = self._index_rdd().map(
            lambda ik: (ik[0], ik[1], fn(_cached_shard(loader, ik[1]), bc.value, ik[0]), None))
        self.state_rdd = rdd.persist()
        self._live[id(rdd)] = (rdd, -1)
        self._broadcasts.append((0, bc))
        self.state_rdd.count()

    def map_state(self, fn, payload):
        from pyspark import StorageLevel
        bc = self.sc.broadcast(payload)
        loader = self.loader

        def step(elem):
            i, key, st, _ = elem
            new_st, res = fn(_cached_shard(loader, key), st, bc.value, i)
            return (i, key, new_st, res)

        self._iter += 1
        checkpoint = self._iter % 10 == 0  # keep lineage short on long runs
        # elements carry (index, shard key, state, this iteration's result); the results are
        # small (factors), so keeping them beside the state saves a second persisted RDD.
        # A checkpoint's blocks are the only copy of that state: two of them, on two executors.
        out = self.state_rdd.map(step).persist(
            StorageLevel.MEMORY_AND_DISK_2 if checkpoint else StorageLevel.MEMORY_ONLY)
        if checkpoint:
            out.localCheckpoint()
            self._checkpoints[self._iter] = out
        root = self._iter if checkpoint else self._live[id(self.state_rdd)][1]
        self._live[id(out)] = (out, root)
        self._broadcasts.append((self._iter, bc))
        results = out.map(lambda t: (t[0], t[3])).collect()
        self.state_rdd = out
        self._release_unneeded()
        results.sort(key=lambda t: t[0])
        return [r for _, r in results]

    def snapshot(self):
        return self.state_rdd

    def restore(self, handle):
        prev, self.state_rdd = self.state_rdd, handle
        self.release(prev)  # the abandoned state: the training loop never uses it again

    def release(self, handle):
        if handle is None or handle is self.state_rdd:
            return
        self._live.pop(id(handle), None)
        if all(handle is not c for c in self._checkpoints.values()):
            handle.unpersist()
        self._release_unneeded()

    def _release_unneeded(self) -> None:
        """Unpersist checkpoints and broadcasts no state in use can need for a recomputation."""
        roots = {root for _, root in self._live.values()}
        for it, c in list(self._checkpoints.items()):
            if it not in roots and id(c) not in self._live:
                c.unpersist()
                del self._checkpoints[it]
        # a state rooted at checkpoint r recomputes with the broadcasts of iterations > r
        oldest = min(roots, default=self._iter)
        keep = []
        for it, bc in self._broadcasts:
            if it <= oldest:
                bc.unpersist()
            else:
                keep.append((it, bc))
        self._broadcasts = keep
