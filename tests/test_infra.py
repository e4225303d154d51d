"""Tests of the cluster launchers in infra/ and of the standalone-cluster test helper.

Everything runs for real on 127.0.0.1: a Spark standalone master and workers (JVMs), a moto server
standing in for EMR and S3, a small HTTP server standing in for Livy, and a fake ``az`` executable
that records its arguments. The launchers run as subprocesses, exactly as a user invokes them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from predictd.localcluster import free_port

REPO = Path(__file__).resolve().parents[1]
EMR_LAUNCH = REPO / "infra" / "emr" / "launch.py"
HDI_DIR = REPO / "infra" / "hdinsight"
HDI_DEPLOY = HDI_DIR / "deploy.py"
LOCAL_CLUSTER = REPO / "infra" / "local_cluster.sh"

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs java on PATH")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _run(cmd: list, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    """Stand-in jobs/ scripts: the launchers only upload them, so their content is irrelevant."""
    d = tmp_path / "jobs"
    d.mkdir()
    for name in ("run", "ingest", "train", "impute"):
        (d / f"{name}.py").write_text(f"print('{name}')\n")
    return d


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "manifest.tsv"
    path.write_text("cell_type\tassay\turi\nE003\tH3K4me3\ts3://data/E003-H3K4me3.bw\n")
    return path


# ------------------------------------------------------------------------------------------------
# Spark standalone cluster (tests/support/sparkcluster.py, infra/local_cluster.sh)
# ------------------------------------------------------------------------------------------------

_JOB = r"""
import json, os, sys, time, urllib.request
from pyspark.sql import SparkSession

builder = SparkSession.builder.appName("predictd-infra-test")
for key, value in json.loads(sys.argv[1]).items():
    builder = builder.config(key, value)
spark = builder.getOrCreate()
sc = spark.sparkContext

def square_sum(rows):
    rows = list(rows)
    time.sleep(0.3)  # long enough that both executors receive tasks
    # An executor's working directory is <worker work dir>/<app id>/<executor id>, and its Python
    # workers inherit it: the basename tells which executor ran the task.
    return [(os.path.basename(os.getcwd()), sum(x * x for x in rows))]

parts = sc.parallelize(range(1000), 8).mapPartitions(square_sum).collect()
url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/executors"
executors = json.load(urllib.request.urlopen(url, timeout=10))
print(json.dumps({
    "sum": sum(s for _, s in parts),
    "executor_dirs": sorted({d for d, _ in parts}),
    "tasks_per_executor": {e["id"]: e["totalTasks"] for e in executors if e["id"] != "driver"},
}))
spark.stop()
"""


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.cluster
@needs_java
def test_standalone_cluster_runs_a_job_on_two_executors(standalone_cluster, tmp_path):
    cluster = standalone_cluster(n_workers=2, cores=1, memory="1g", state_dir=tmp_path / "c")
    try:
        assert cluster.master_url.startswith("spark://127.0.0.1:")
        assert cluster.alive_workers() == 2
        assert all(_pid_alive(pid) for pid in cluster.worker_pids)

        conf = cluster.spark_conf(executor_memory="512m")
        conf["spark.ui.port"] = str(free_port())
        env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
        proc = _run([sys.executable, "-c", _JOB, json.dumps(conf)], env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])

        assert result["sum"] == sum(x * x for x in range(1000))
        assert result["executor_dirs"] == ["0", "1"]
        assert sorted(result["tasks_per_executor"]) == ["0", "1"]
        assert all(n > 0 for n in result["tasks_per_executor"].values())
        assert sum(result["tasks_per_executor"].values()) == 8

        # A "lost node": the worker and its executor die together.
        victim = cluster.worker_pids[1]
        cluster.kill_worker(1)
        assert not _pid_alive(victim)
        cluster.wait_for_workers(1, timeout=30)
        assert _pid_alive(cluster.worker_pids[0])
    finally:
        cluster.stop()
    assert not _pid_alive(cluster.master_pid)
    assert not any(_pid_alive(pid) for pid in cluster.worker_pids)
    assert (tmp_path / "c" / "master.log").is_file()


@pytest.mark.slow
@pytest.mark.cluster
@needs_java
def test_local_cluster_script_start_status_stop(tmp_path):
    env = dict(os.environ, PREDICTD_CLUSTER_DIR=str(tmp_path / "state"), PREDICTD_MASTER_PORT="0",
               PREDICTD_MASTER_WEBUI_PORT="0", PYTHON=sys.executable)
    start = _run(["bash", LOCAL_CLUSTER, "start", "1", "1", "512m"], env=env, timeout=120)
    pids = [int(p.read_text()) for p in (tmp_path / "state" / "pids").glob("*.pid")]
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        master_url = start.stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"spark://127\.0\.0\.1:\d+", master_url)
        assert (tmp_path / "state" / "master_url").read_text().strip() == master_url
        assert len(pids) == 2 and all(_pid_alive(p) for p in pids)

        status = _run(["bash", LOCAL_CLUSTER, "status"], env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "alive workers (per master): 1" in status.stdout

        again = _run(["bash", LOCAL_CLUSTER, "start"], env=env)
        assert again.returncode != 0 and "already running" in again.stderr
    finally:
        stop = _run(["bash", LOCAL_CLUSTER, "stop"], env=env)
        for pid in pids:  # never leave JVMs behind, even if stop is broken
            if _pid_alive(pid):
                os.killpg(pid, signal.SIGKILL)
    assert stop.returncode == 0 and "stopped 2 daemon(s)" in stop.stdout
    assert not any(_pid_alive(p) for p in pids)
    assert _run(["bash", LOCAL_CLUSTER, "status"], env=env).returncode == 3


def test_local_cluster_script_rejects_bad_arguments(tmp_path):
    env = dict(os.environ, PREDICTD_CLUSTER_DIR=str(tmp_path / "state"))
    bad = _run(["bash", LOCAL_CLUSTER, "start", "two"], env=env)
    assert bad.returncode == 1 and "N_WORKERS" in bad.stderr
    assert _run(["bash", LOCAL_CLUSTER, "frobnicate"], env=env).returncode == 2


# ------------------------------------------------------------------------------------------------
# EMR launcher
# ------------------------------------------------------------------------------------------------

def _emr_args(manifest: Path, jobs_dir: Path, *extra: str) -> list:
    return [sys.executable, EMR_LAUNCH, "--staging-uri", "s3://predictd-stage/pre",
            "--manifest", manifest, "--genome", "hg38", "--out", "s3://predictd-out/run1",
            "--jobs-dir", jobs_dir, "--run-id", "r1", *extra]


def test_emr_dry_run_prints_the_request(manifest, jobs_dir, tmp_path):
    config = tmp_path / "my.toml"
    config.write_text("latent_factors = 20\n")
    proc = _run(_emr_args(manifest, jobs_dir, "--name", "roadmap", "--config", config,
                          "--core-spot", "3", "--task-spot", "5", "--tag", "owner=lab",
                          "--dry-run", "--", "--holdout", "E003:H3K4me3"),
                env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")})
    assert proc.returncode == 0, proc.stderr
    request = json.loads(proc.stdout)
    assert proc.stdout.strip() == json.dumps(request, indent=2, sort_keys=True)

    assert request["Name"] == "roadmap"
    assert re.fullmatch(r"emr-7\.\d+\.\d+", request["ReleaseLabel"])
    assert request["Applications"] == [{"Name": "Spark"}]
    assert request["Instances"]["KeepJobFlowAliveWhenNoSteps"] is False
    assert request["VisibleToAllUsers"] is True
    assert request["LogUri"] == "s3://predictd-stage/pre/logs/"
    assert request["ServiceRole"] == "EMR_DefaultRole"
    assert request["JobFlowRole"] == "EMR_EC2_DefaultRole"
    assert {"Key": "owner", "Value": "lab"} in request["Tags"]

    fleets = {f["InstanceFleetType"]: f for f in request["Instances"]["InstanceFleets"]}
    assert set(fleets) == {"MASTER", "CORE", "TASK"}
    assert fleets["MASTER"]["TargetOnDemandCapacity"] == 1
    assert "TargetSpotCapacity" not in fleets["MASTER"]
    assert fleets["CORE"]["TargetSpotCapacity"] == 3
    assert fleets["TASK"]["TargetSpotCapacity"] == 5
    for kind in ("CORE", "TASK"):
        spot = fleets[kind]["LaunchSpecifications"]["SpotSpecification"]
        assert spot["AllocationStrategy"] == "capacity-optimized"
        assert len({c["InstanceType"] for c in fleets[kind]["InstanceTypeConfigs"]}) >= 4

    (bootstrap,) = request["BootstrapActions"]
    assert bootstrap["ScriptBootstrapAction"]["Path"] == "s3://predictd-stage/pre/runs/r1/bootstrap.sh"
    assert bootstrap["ScriptBootstrapAction"]["Args"][:2] == ["--package", "predictd"]

    stage, submit = request["Steps"]
    assert stage["ActionOnFailure"] == submit["ActionOnFailure"] == "TERMINATE_CLUSTER"
    script = stage["HadoopJarStep"]["Args"][2]
    assert "s3://predictd-stage/pre/runs/r1/manifest.tsv /home/hadoop/predictd-runs/r1/manifest.tsv" in script
    assert "s3://predictd-stage/pre/runs/r1/config.toml" in script
    args = submit["HadoopJarStep"]["Args"]
    assert submit["HadoopJarStep"]["Jar"] == "command-runner.jar"
    assert args[:5] == ["spark-submit", "--master", "yarn", "--deploy-mode", "client"]
    script_at = args.index("/home/hadoop/predictd-runs/r1/jobs/run.py")
    assert args[script_at + 1:] == [
        "--manifest", "/home/hadoop/predictd-runs/r1/manifest.tsv", "--genome", "hg38",
        "--out", "s3://predictd-out/run1", "--config", "/home/hadoop/predictd-runs/r1/config.toml",
        "--holdout", "E003:H3K4me3"]
    assert "spark.pyspark.python=/usr/bin/python3.11" in args
    # event logs where EMR's history server (and the console's persistent Spark UI) read them
    defaults = next(c["Properties"] for c in request["Configurations"]
                    if c["Classification"] == "spark-defaults")
    assert defaults["spark.eventLog.enabled"] == "true"
    assert defaults["spark.eventLog.dir"] == defaults["spark.history.fs.logDirectory"] \
        == "hdfs:///var/log/spark/apps"
    assert not any(a.startswith(("spark.eventLog.", "spark.ui.")) for a in args)

    # What would be uploaded is reported, nothing is.
    assert f"would upload {manifest.resolve()} -> s3://predictd-stage/pre/runs/r1/manifest.tsv" in proc.stderr


def test_emr_dry_run_request_matches_the_emr_api_model(manifest, jobs_dir):
    botocore_session = pytest.importorskip("botocore.session")
    from botocore.validate import ParamValidator

    model = botocore_session.get_session().get_service_model("emr")
    for extra in ([], ["--keep-alive", "--subnet", "subnet-1", "--subnet", "subnet-2",
                       "--task-spot", "0", "--core-types", "m5.2xlarge:1,m5.4xlarge:2"]):
        proc = _run(_emr_args(manifest, jobs_dir, "--dry-run", *extra))
        assert proc.returncode == 0, proc.stderr
        request = json.loads(proc.stdout)
        report = ParamValidator().validate(request, model.operation_model("RunJobFlow").input_shape)
        assert not report.has_errors(), report.generate_report()

    proc = _run(_emr_args(manifest, jobs_dir, "--dry-run", "--add-step", "j-ABC"))
    request = json.loads(proc.stdout)
    report = ParamValidator().validate(request, model.operation_model("AddJobFlowSteps").input_shape)
    assert not report.has_errors(), report.generate_report()
    assert request["JobFlowId"] == "j-ABC"
    assert [s["ActionOnFailure"] for s in request["Steps"]] == ["CONTINUE", "CONTINUE"]


def test_emr_keep_alive_and_weights(manifest, jobs_dir):
    proc = _run(_emr_args(manifest, jobs_dir, "--dry-run", "--keep-alive", "--idle-timeout", "900",
                          "--task-spot", "0", "--core-types", "m5.2xlarge:1,m5.4xlarge:2",
                          "--on-failure", "continue"))
    request = json.loads(proc.stdout)
    assert request["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True
    assert request["AutoTerminationPolicy"] == {"IdleTimeout": 900}
    fleets = request["Instances"]["InstanceFleets"]
    assert [f["InstanceFleetType"] for f in fleets] == ["MASTER", "CORE"]
    assert [c.get("WeightedCapacity") for c in fleets[1]["InstanceTypeConfigs"]] == [1, 2]
    assert {s["ActionOnFailure"] for s in request["Steps"]} == {"CONTINUE"}


@pytest.mark.parametrize("change, culprit", [
    (["--manifest", "/nonexistent/m.tsv"], "/nonexistent/m.tsv"),
    (["--genome", "/nonexistent/hg.chrom.sizes"], "/nonexistent/hg.chrom.sizes"),
    (["--out", "/local/dir"], "--out"),
    (["--core-spot", "0"], "core fleet"),
    (["--release-label", "emr-6.15.0"], "emr-7.0.0 or later"),
    (["--genome", "hg99"], "--genome 'hg99': not a bundled assembly"),
    (["--idle-timeout", "-5"], "EMR's minimum is 60 seconds"),
    (["--", "--out", "s3://other/x"], "give --out to launch.py itself"),
])
def test_emr_bad_arguments_exit_nonzero_naming_the_culprit(manifest, jobs_dir, change, culprit):
    args = _emr_args(manifest, jobs_dir, "--dry-run")
    flag = change[0]
    if flag in args:
        args[args.index(flag) + 1] = change[1]
    else:
        args += change
    proc = _run(args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert culprit in proc.stderr


def test_emr_refuses_a_manifest_of_local_tracks(jobs_dir, tmp_path):
    local = tmp_path / "local.tsv"
    local.write_text("cell_type\tassay\turi\nE003\tH3K4me3\ts3://data/a.bw\n"
                     "E017\tH3K4me3\tdemo/inputs/E017.H3K4me3.bw\n")
    proc = _run(_emr_args(local, jobs_dir, "--dry-run"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "row 3: track 'demo/inputs/E017.H3K4me3.bw' is a local path" in proc.stderr


def test_emr_staged_genome_and_local_wheel(manifest, jobs_dir, tmp_path):
    sizes = tmp_path / "tiny.chrom.sizes"
    sizes.write_text("chr1\t1000\n")
    wheel = tmp_path / "predictd-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    args = _emr_args(manifest, jobs_dir, "--dry-run", "--package-source", wheel)
    args[args.index("--genome") + 1] = str(sizes)
    proc = _run(args)
    assert proc.returncode == 0, proc.stderr
    request = json.loads(proc.stdout)
    assert request["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"][1] == \
        f"s3://predictd-stage/pre/runs/r1/{wheel.name}"
    submit_args = request["Steps"][1]["HadoopJarStep"]["Args"]
    assert submit_args[submit_args.index("--genome") + 1] == \
        "/home/hadoop/predictd-runs/r1/genome.chrom.sizes"


@pytest.fixture
def moto_endpoint(monkeypatch):
    """A real moto server on 127.0.0.1 with fake credentials in the environment."""
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-value")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # moto's backends are process-global: start every test from an empty account.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"),
                           timeout=10).close()
    yield endpoint
    server.stop()


@pytest.mark.slow
@pytest.mark.cloud
def test_emr_launch_and_add_step_against_moto(moto_endpoint, manifest, jobs_dir):
    import boto3

    boto3.client("s3").create_bucket(Bucket="predictd-stage")
    launch = _run(_emr_args(manifest, jobs_dir, "--name", "predictd-moto"), env=dict(os.environ))
    assert launch.returncode == 0, launch.stderr
    assert "testing-secret-value" not in launch.stdout + launch.stderr
    result = json.loads(launch.stdout)
    cluster_id = result["cluster_id"]

    emr = boto3.client("emr")
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["Name"] == "predictd-moto"
    assert re.fullmatch(r"emr-7\.\d+\.\d+", cluster["ReleaseLabel"])
    assert cluster["AutoTerminate"] is True
    assert cluster["VisibleToAllUsers"] is True
    assert {"Key": "predictd:run-id", "Value": "r1"} in cluster["Tags"]
    steps = emr.list_steps(ClusterId=cluster_id)["Steps"]
    assert sorted(s["Name"] for s in steps) == ["predictd run r1", "predictd stage r1"]
    submit = next(s for s in steps if s["Name"] == "predictd run r1")
    assert submit["Config"]["Args"][0] == "spark-submit"
    assert "s3://predictd-out/run1" in submit["Config"]["Args"]
    actions = emr.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"]
    assert actions[0]["ScriptPath"] == "s3://predictd-stage/pre/runs/r1/bootstrap.sh"

    # The uploads are real objects, byte for byte.
    s3 = boto3.client("s3")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="predictd-stage")["Contents"]}
    assert {"pre/runs/r1/bootstrap.sh", "pre/runs/r1/manifest.tsv", "pre/runs/r1/jobs/run.py"} <= keys
    body = s3.get_object(Bucket="predictd-stage", Key="pre/runs/r1/manifest.tsv")["Body"].read()
    assert body == manifest.read_bytes()

    # Resume: only add steps to the running cluster.
    args = _emr_args(manifest, jobs_dir, "--add-step", cluster_id)
    args[args.index("--run-id") + 1] = "r2"
    add = _run(args, env=dict(os.environ))
    assert add.returncode == 0, add.stderr
    added = json.loads(add.stdout)
    assert added["cluster_id"] == cluster_id and len(added["step_ids"]) == 2
    steps = emr.list_steps(ClusterId=cluster_id)["Steps"]
    assert len(steps) == 4
    resumed = [s for s in steps if s["Name"].endswith(" r2")]
    assert {s["ActionOnFailure"] for s in resumed} == {"CONTINUE"}
    assert len(emr.list_clusters()["Clusters"]) == 1


@pytest.mark.cloud
def test_emr_launch_reports_aws_errors_in_one_line(moto_endpoint, manifest, jobs_dir):
    # No staging bucket: the upload fails before any cluster is requested.
    proc = _run(_emr_args(manifest, jobs_dir), env=dict(os.environ))
    assert proc.returncode == 1
    assert proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert "uploading" in line and "s3://predictd-stage/pre/runs/r1/" in line
    import boto3
    assert boto3.client("emr").list_clusters()["Clusters"] == []


# ------------------------------------------------------------------------------------------------
# HDInsight
# ------------------------------------------------------------------------------------------------

def test_hdinsight_template_is_a_complete_arm_template():
    template = json.loads((HDI_DIR / "template.json").read_text())
    assert {"$schema", "contentVersion", "parameters", "resources", "outputs"} <= set(template)
    assert "deploymentTemplate.json" in template["$schema"]
    (cluster,) = [r for r in template["resources"] if r["type"] == "Microsoft.HDInsight/clusters"]
    assert {"apiVersion", "name", "location", "properties"} <= set(cluster)
    props = cluster["properties"]
    assert props["clusterDefinition"]["kind"] == "spark"
    assert props["osType"] == "Linux"
    roles = {r["name"]: r for r in props["computeProfile"]["roles"]}
    assert set(roles) == {"headnode", "workernode"}
    assert roles["workernode"]["targetInstanceCount"] == "[parameters('workerNodeCount')]"
    assert roles["workernode"]["hardwareProfile"]["vmSize"] == "[parameters('workerNodeSize')]"
    for role in roles.values():
        assert role["scriptActions"] == "[variables('scriptActions')]"
    (action,) = template["variables"]["scriptActions"]
    assert action["uri"] == "[parameters('scriptActionUri')]"
    assert props["storageProfile"]["storageaccounts"][0]["isDefault"] is True
    # no spark-defaults override: the Spark history server keeps reading the event logs from
    # the default storage's /hdp/spark2-events, where HDInsight's own defaults write them
    assert set(props["clusterDefinition"]["configurations"]) == {"gateway"}

    params = template["parameters"]
    for name in ("clusterName", "clusterLoginUserName", "clusterLoginPassword", "sshUserName",
                 "sshPublicKey", "sshPassword", "workerNodeCount", "workerNodeSize",
                 "storageAccountName", "scriptActionUri", "predictdPackageSource"):
        assert name in params, name
    assert params["clusterLoginPassword"]["type"] == "securestring"
    assert params["sshPassword"]["type"] == "securestring"
    assert params["scriptActionUri"]["type"] == "securestring"  # it usually carries a SAS

    # Every parameters('x') / variables('x') used is declared (ARM fails late on these).
    text = (HDI_DIR / "template.json").read_text()
    assert set(re.findall(r"parameters\('(\w+)'\)", text)) <= set(params)
    assert set(re.findall(r"variables\('(\w+)'\)", text)) <= set(template["variables"])
    # A secure value must never be an output.
    assert "Password" not in json.dumps(template["outputs"])


def _hdi_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREDICTD_HDI")}
    env.update(extra)
    return env


def _hdi_deploy_dry_run(tmp_path, *args: str, env: dict | None = None):
    """``deploy.py deploy ARGS --dry-run`` for cluster predictd1 on account predictd1store,
    with an SSH public key file."""
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAATESTKEY user@host\n")
    return _run([sys.executable, HDI_DEPLOY, "deploy", "--cluster-name", "predictd1",
                 "--storage-account", "predictd1store", *args, "--ssh-public-key-file", key,
                 "--dry-run"], env=env if env is not None else _hdi_env())


def test_hdinsight_deploy_dry_run_prints_the_az_command(tmp_path):
    proc = _hdi_deploy_dry_run(tmp_path, "--resource-group", "rg-predictd",
                               "--script-uri", "https://example.invalid/install-predictd.sh",
                               "--worker-count", "6", "--worker-size", "Standard_E16_V3",
                               env=_hdi_env(PREDICTD_HDI_PASSWORD="Very-Secret-123"))
    assert proc.returncode == 0, proc.stderr
    import shlex
    (line,) = proc.stdout.strip().splitlines()
    argv = shlex.split(line)
    assert argv[:4] == ["az", "deployment", "group", "create"]
    assert argv[argv.index("--resource-group") + 1] == "rg-predictd"
    assert argv[argv.index("--template-file") + 1] == str(HDI_DIR / "template.json")
    assert "workerNodeCount=6" in argv and "workerNodeSize=Standard_E16_V3" in argv
    assert "clusterName=predictd1" in argv and "storageAccountName=predictd1store" in argv
    assert "sshPublicKey=ssh-ed25519 AAAATESTKEY user@host" in argv
    assert argv[-1].startswith("@")  # passwords travel in a file, not on the command line
    assert "Very-Secret-123" not in proc.stdout + proc.stderr
    template_params = json.loads((HDI_DIR / "template.json").read_text())["parameters"]
    for arg in argv:
        if "=" in arg and not arg.startswith("@"):
            assert arg.split("=", 1)[0] in template_params, arg


def test_hdinsight_submit_dry_run_prints_uploads_and_livy_json(manifest, jobs_dir):
    proc = _run([sys.executable, HDI_DEPLOY, "submit", "--cluster-name", "predictd1",
                 "--storage-account", "predictd1store", "--manifest", manifest, "--genome", "hg38",
                 "--out", "s3://predictd-out/hdi", "--jobs-dir", jobs_dir, "--run-id", "r7",
                 "--dry-run", "--", "--holdout", "E003:H3K4me3"], env=_hdi_env())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    post = next(i for i, line in enumerate(lines) if line.startswith("POST "))
    assert lines[post] == "POST https://predictd1.azurehdinsight.net/livy/batches"
    commands = lines[:post]
    assert len(commands) == 2 and all(c.startswith("az storage blob upload") for c in commands)
    assert "--destination-path predictd/runs/r7/jobs" in commands[0]
    assert f"--file {manifest.resolve()}" in commands[1]

    body = json.loads("\n".join(lines[post + 1:]))
    base = "wasbs://predictd1@predictd1store.blob.core.windows.net/predictd/runs/r7"
    assert body["file"] == f"{base}/jobs/run.py"
    assert body["args"] == ["--manifest", "manifest.tsv", "--genome", "hg38",
                            "--out", "s3://predictd-out/hdi", "--holdout", "E003:H3K4me3"]
    assert body["files"] == [f"{base}/manifest.tsv#manifest.tsv"]
    assert body["conf"]["spark.pyspark.python"] == "/usr/local/bin/predictd-python"
    assert body["name"] == "predictd-run-r7"
    # HDInsight's history server reads the cluster's own spark2-events folder: left alone
    assert not any(k.startswith(("spark.eventLog.", "spark.history.", "spark.ui."))
                   for k in body["conf"])


class _LivyHandler(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):  # noqa: N802 (http.server naming)
        length = int(self.headers["Content-Length"])
        type(self).requests.append({"path": self.path, "headers": dict(self.headers),
                                    "body": json.loads(self.rfile.read(length))})
        payload = json.dumps({"id": 42, "state": "starting"}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def _fake_az(tmp_path: Path) -> Path:
    """An `az` that records argv and, for a secrets file argument, its mode and content."""
    log = tmp_path / "az-calls.jsonl"
    script = tmp_path / "az"
    script.write_text(f"""#!{sys.executable}
import json, os, stat, sys
record = {{"argv": sys.argv[1:]}}
for arg in sys.argv[1:]:
    if arg.startswith("@"):
        record["secrets_mode"] = oct(stat.S_IMODE(os.stat(arg[1:]).st_mode))
        record["secrets"] = json.load(open(arg[1:]))
with open({str(log)!r}, "a") as fh:
    fh.write(json.dumps(record) + "\\n")
if "generate-sas" in sys.argv:
    print({FAKE_SAS!r})
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


#: What the fake `az storage container generate-sas` prints: a secret to pass on, never print.
FAKE_SAS = "se=2030-01-01&sp=racwdl&sv=2022-11-02&sr=c&sig=FAKESIGNATURE0123"


def test_hdinsight_submit_defaults_out_to_the_cluster_storage(manifest, jobs_dir):
    proc = _run([sys.executable, HDI_DEPLOY, "submit", "--cluster-name", "predictd1",
                 "--storage-account", "predictd1store", "--manifest", manifest, "--genome", "hg38",
                 "--jobs-dir", jobs_dir, "--run-id", "r8", "--storage-auth-mode", "login",
                 "--dry-run"], env=_hdi_env())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("az storage container generate-sas --account-name predictd1store "
                               "--name predictd1 --permissions racwdl --https-only")
    assert lines[0].endswith("--auth-mode login --as-user")  # a user delegation SAS: no key
    post = next(i for i, line in enumerate(lines) if line.startswith("POST "))
    body = json.loads("\n".join(lines[post + 1:]))
    out = body["args"][body["args"].index("--out") + 1]
    assert out == "abfss://predictd1@predictd1store.dfs.core.windows.net/predictd/runs/r8/out"
    for key in ("spark.yarn.appMasterEnv.AZURE_STORAGE_SAS_TOKEN",
                "spark.executorEnv.AZURE_STORAGE_SAS_TOKEN"):
        assert body["conf"][key].startswith("<sas from")
    # managed identity instead: no SAS is made or sent
    proc = _run([sys.executable, HDI_DEPLOY, "submit", "--cluster-name", "predictd1",
                 "--storage-account", "predictd1store", "--manifest", manifest, "--genome", "hg38",
                 "--jobs-dir", jobs_dir, "--storage-credential", "identity", "--dry-run"],
                env=_hdi_env())
    assert proc.returncode == 0 and "generate-sas" not in proc.stdout and "SAS_TOKEN" not in proc.stdout


def test_hdinsight_submit_makes_the_sas_for_the_out_and_refuses_what_would_fail_late(
        tmp_path, manifest, jobs_dir):
    base = [sys.executable, HDI_DEPLOY, "submit", "--cluster-name", "predictd1",
            "--storage-account", "predictd1store", "--manifest", manifest, "--genome", "hg38",
            "--jobs-dir", jobs_dir, "--dry-run"]
    for out, account, container in [
            ("abfss://results@otheracct.dfs.core.windows.net/x", "otheracct", "results"),
            ("wasbs://res2@acct3.blob.core.windows.net/y", "acct3", "res2"),
            ("az://results/x", "predictd1store", "results")]:
        proc = _run([*base, "--out", out], env=_hdi_env())
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"az storage container generate-sas --account-name {account} "
                                      f"--name {container} "), proc.stdout.splitlines()[0]
    for extra, culprit in [(["--out", "/local/out"], "--out '/local/out': a storage URI"),
                           (["--run-id", "../../etc"], "--run-id '../../etc': letters"),
                           (["--sas-hours", "0"], "--sas-hours 0: at least 1"),
                           (["--genome", "hg99"], "--genome 'hg99': not a bundled assembly"),
                           (["--", "--out", "az://c/x"], "give --out to submit itself")]:
        proc = _run([*base, *extra], env=_hdi_env())
        assert proc.returncode == 2 and culprit in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_hdinsight_deploy_keeps_the_script_uri_sas_off_the_command_line(tmp_path):
    proc = _hdi_deploy_dry_run(
        tmp_path, "--resource-group", "rg",
        "--script-uri", "https://a.blob.core.windows.net/s/i.sh?sv=1&sig=SIGSECRET123")
    assert proc.returncode == 0, proc.stderr
    assert "SIGSECRET123" not in proc.stdout + proc.stderr
    assert "scriptActionUri" in proc.stderr  # named among the secrets file's contents


def test_hdinsight_submit_passes_the_sas_to_the_job_without_printing_it(tmp_path, manifest, jobs_dir):
    az = _fake_az(tmp_path)
    _LivyHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LivyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/livy/batches"
        submit = _run([sys.executable, HDI_DEPLOY, "submit", "--cluster-name", "predictd1",
                       "--storage-account", "predictd1store", "--manifest", manifest,
                       "--genome", "hg38", "--jobs-dir", jobs_dir, "--run-id", "r10", "--az", az,
                       "--livy-url", url], env=_hdi_env(PREDICTD_HDI_PASSWORD="Very-Secret-123"))
    finally:
        server.shutdown()
        thread.join(timeout=5)
    assert submit.returncode == 0, submit.stderr
    assert "FAKESIGNATURE" not in submit.stdout + submit.stderr
    (request,) = _LivyHandler.requests
    conf = request["body"]["conf"]
    assert conf["spark.yarn.appMasterEnv.AZURE_STORAGE_SAS_TOKEN"] == FAKE_SAS
    assert conf["spark.executorEnv.AZURE_STORAGE_SAS_TOKEN"] == FAKE_SAS
    calls = [json.loads(line) for line in (tmp_path / "az-calls.jsonl").read_text().splitlines()]
    assert calls[0]["argv"][:3] == ["storage", "container", "generate-sas"]


def test_hdinsight_deploy_and_submit_execute(tmp_path, manifest, jobs_dir):
    az = _fake_az(tmp_path)
    env = _hdi_env(PREDICTD_HDI_PASSWORD="Very-Secret-123", PREDICTD_HDI_SSH_PASSWORD="Ssh-Secret-456")
    deploy = _run([sys.executable, HDI_DEPLOY, "deploy", "--resource-group", "rg",
                   "--cluster-name", "predictd1", "--storage-account", "predictd1store",
                   "--script-uri", "https://example.invalid/s.sh", "--az", az], env=env)
    assert deploy.returncode == 0, deploy.stderr
    assert "Secret" not in deploy.stdout + deploy.stderr
    (call,) = [json.loads(line) for line in (tmp_path / "az-calls.jsonl").read_text().splitlines()]
    assert call["argv"][:3] == ["deployment", "group", "create"]
    assert call["secrets_mode"] == "0o600"
    assert call["secrets"]["parameters"] == {"clusterLoginPassword": {"value": "Very-Secret-123"},
                                             "sshPassword": {"value": "Ssh-Secret-456"},
                                             "scriptActionUri": {"value": "https://example.invalid/s.sh"}}
    secrets_path = Path(next(a for a in call["argv"] if a.startswith("@"))[1:])
    assert not secrets_path.exists()  # removed once az returned

    _LivyHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LivyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/livy/batches"
        submit = _run([sys.executable, HDI_DEPLOY, "submit", "--cluster-name", "predictd1",
                       "--storage-account", "predictd1store", "--manifest", manifest,
                       "--genome", "hg38", "--out", "s3://o/x", "--jobs-dir", jobs_dir,
                       "--run-id", "r9", "--az", az, "--livy-url", url], env=env)
    finally:
        server.shutdown()
        thread.join(timeout=5)
    assert submit.returncode == 0, submit.stderr
    assert json.loads(submit.stdout)["batch_id"] == 42
    (request,) = _LivyHandler.requests
    assert request["path"] == "/livy/batches"
    assert request["headers"]["X-Requested-By"] == "admin"
    assert request["headers"]["Authorization"] == \
        "Basic " + base64.b64encode(b"admin:Very-Secret-123").decode()
    assert request["body"]["args"][:2] == ["--manifest", "manifest.tsv"]
    calls = [json.loads(line) for line in (tmp_path / "az-calls.jsonl").read_text().splitlines()]
    assert [c["argv"][:4] for c in calls[1:]] == [["storage", "blob", "upload-batch", "--account-name"],
                                                   ["storage", "blob", "upload", "--account-name"]]


def test_hdinsight_deploy_needs_the_password(tmp_path):
    proc = _run([sys.executable, HDI_DEPLOY, "deploy", "--resource-group", "rg",
                 "--cluster-name", "c1", "--storage-account", "store1", "--script-uri", "https://x/s.sh",
                 "--az", _fake_az(tmp_path)], env=_hdi_env())
    assert proc.returncode == 2
    assert "PREDICTD_HDI_PASSWORD" in proc.stderr
    assert not (tmp_path / "az-calls.jsonl").exists()


def test_shell_scripts_parse():
    for script in (LOCAL_CLUSTER, REPO / "infra" / "emr" / "bootstrap.sh",
                   HDI_DIR / "install-predictd.sh"):
        proc = _run(["bash", "-n", script])
        assert proc.returncode == 0, f"{script}: {proc.stderr}"


def test_launchers_repeat_the_bundled_assemblies_exactly():
    """The launchers need no predictd, so they repeat its assembly names: the same ones."""
    import ast
    from predictd.genome import BUNDLED_GENOMES
    for script in (EMR_LAUNCH, HDI_DEPLOY):
        m = re.search(r"^BUNDLED_GENOMES = (\(.*\))$", Path(script).read_text(), re.M)
        assert m and ast.literal_eval(m.group(1)) == BUNDLED_GENOMES, script


@pytest.mark.parametrize("change, culprit", [
    (["--storage-account", "Predictd_Store"], "3-24 lower-case letters and digits"),
    (["--worker-count", "0"], "--worker-count 0: at least 1"),
    (["--script-uri", "/local/install.sh"], "--script-uri: an https:// URL"),
])
def test_hdinsight_deploy_refuses_what_the_template_would(tmp_path, change, culprit):
    good = [sys.executable, HDI_DEPLOY, "deploy", "--resource-group", "rg",
            "--cluster-name", "predictd1", "--storage-account", "predictd1store",
            "--script-uri", "https://example.invalid/s.sh", "--worker-count", "2", "--dry-run"]
    args = list(good)
    args[args.index(change[0]) + 1] = change[1]
    proc = _run(args, env=_hdi_env())
    assert proc.returncode == 2 and culprit in proc.stderr, proc.stderr
    proc = _run(good, env=_hdi_env(PREDICTD_HDI_PASSWORD="short"))
    assert proc.returncode == 2 and "at least 10 characters" in proc.stderr, proc.stderr


def test_launchers_argument_errors_are_one_line():
    for argv in ([sys.executable, EMR_LAUNCH, "--dry-run"],
                 [sys.executable, HDI_DEPLOY, "submit", "--cluster-name", "c1"]):
        proc = _run(argv)
        assert proc.returncode == 2 and proc.stdout == ""
        (line,) = proc.stderr.strip().splitlines()
        assert "error: the following arguments are required: " in line, line
