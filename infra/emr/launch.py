#!/usr/bin/env python3
"""Launch predictd on Amazon EMR: a Spark cluster on spot instance fleets that runs one pipeline and
terminates itself.

Two modes:

* default: ``RunJobFlow`` — new cluster (on-demand master, spot core/task fleets), a bootstrap
  action that pip-installs predictd on every node, two steps (stage the run's files onto the master
  node, then ``spark-submit jobs/<job>.py``), auto-termination when the steps are done;
* ``--add-step CLUSTER_ID``: ``AddJobFlowSteps`` — the same two steps on a running cluster, e.g. to
  resume after a spot loss (predictd skips stages whose outputs are already complete in OUT).

Files the cluster needs (bootstrap script, ``jobs/*.py``, and a local manifest / config / chrom.sizes
/ wheel, if given) are uploaded under ``STAGING/runs/RUN_ID/``. ``--dry-run`` prints the exact
request as JSON with sorted keys (and lists the uploads on stderr) without calling AWS.

Credentials come from boto3's default chain only (env, profile, SSO, instance role);
``AWS_ENDPOINT_URL`` is honoured, which is how the tests point this script at a local moto server.
This script is deliberately self-contained (stdlib + boto3): it runs on a laptop without predictd.

Example
-------
    python infra/emr/launch.py --name roadmap --staging-uri s3://my-bucket/predictd \\
        --manifest data_manifests/roadmap_consolidated_pval.tsv --genome hg19 \\
        --out s3://my-bucket/results/roadmap \\
        --config my.toml --core-spot 2 --task-spot 8 --dry-run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

#: The assemblies predictd bundles (predictd.genome.BUNDLED_GENOMES; this script needs only
#: the standard library and boto3, so the names are repeated here).
BUNDLED_GENOMES = ("hg19", "hg38", "mm10")
#: Newest EMR 7 release when this was written: emr-7.13.0 ships Spark 3.5.6-amzn-2 on Amazon Linux
#: 2023. Override with --release-label; predictd needs Spark >= 3.5 (emr-7.0.0 or later).
DEFAULT_RELEASE_LABEL = "emr-7.13.0"

#: Interpreter for the driver and executors; AL2023 packages python3.11 (the system python3 is 3.9).
DEFAULT_PYTHON = "/usr/bin/python3.11"

#: Spot diversity matters more than the exact type: capacity-optimized picks the pools least likely
#: to be interrupted, and every extra type is another pool. All are 8 vCPU / 32-64 GiB, so one unit
#: of target capacity is one node of roughly the same speed.
DEFAULT_WORKER_TYPES = (
    "m5.2xlarge,m5a.2xlarge,m5d.2xlarge,m6i.2xlarge,m6a.2xlarge,m7i.2xlarge,"
    "r5.2xlarge,r5a.2xlarge,r6i.2xlarge"
)
DEFAULT_MASTER_TYPES = "m5.2xlarge,m6i.2xlarge,m5a.2xlarge"

JOBS = ("run", "ingest", "train", "impute")
REPO_ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP_SCRIPT = Path(__file__).resolve().parent / "bootstrap.sh"
#: Where the staging step puts a run's files on the master node (the driver runs there, in client
#: deploy mode, because the master is on-demand and survives spot interruptions).
REMOTE_RUNS_DIR = "/home/hadoop/predictd-runs"


class LaunchError(Exception):
    """Bad arguments or missing local files; printed as one line, exit code 2."""


@dataclass
class Plan:
    """What a launch will upload and where the cluster will find each input.

    Attributes
    ----------
    run_id : str
        Names the staging prefix and the directory on the master node.
    uploads : list of (local path, s3 URI)
        Files to copy before the request is sent.
    fetches : list of (s3 URI, remote path)
        Files the staging step copies onto the master node.
    job_args : list of str
        Arguments of ``jobs/<job>.py`` as the driver sees them.
    package_source : str
        What the bootstrap action pip-installs (PyPI name, git URL or s3:// wheel).
    bootstrap_uri : str
        s3:// URI of the bootstrap script.
    """

    run_id: str
    staging_uri: str
    uploads: list[tuple[str, str]] = field(default_factory=list)
    fetches: list[tuple[str, str]] = field(default_factory=list)
    job_args: list[str] = field(default_factory=list)
    package_source: str = ""
    bootstrap_uri: str = ""

    @property
    def run_prefix(self) -> str:
        return f"{self.staging_uri}/runs/{self.run_id}"

    @property
    def remote_dir(self) -> str:
        return f"{REMOTE_RUNS_DIR}/{self.run_id}"


# --------------------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------------------

def _s3_uri(value: str) -> str:
    if not re.match(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$", value):
        raise argparse.ArgumentTypeError(f"expected s3://bucket[/prefix], got {value!r}")
    return value.rstrip("/")


def _key_value(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key, val


def _run_id(value: str) -> str:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", value):
        raise argparse.ArgumentTypeError(f"run id must be [A-Za-z0-9._-], got {value!r}")
    return value


def _positive(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {value!r}")
    return number


class OneLineErrors(argparse.ArgumentParser):
    """A bad argument is one line naming it (argparse prints its whole usage block first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface; everything after a bare ``--`` is passed to the job unchanged.

    Returns
    -------
    argparse.ArgumentParser
    """
    p = OneLineErrors(
        prog="launch.py",
        description="Run predictd on an auto-terminating EMR cluster with spot fleets "
                    "(or add a step to a running one). Arguments after '--' go to the job.",
    )
    mode = p.add_argument_group("mode")
    mode.add_argument("--add-step", metavar="CLUSTER_ID",
                      help="only add the staging + spark-submit steps to this running cluster")
    mode.add_argument("--dry-run", action="store_true",
                      help="print the exact request as JSON (sorted keys); no AWS call, no upload")
    mode.add_argument("--region", help="AWS region (default: boto3's default chain)")

    job = p.add_argument_group("job")
    job.add_argument("--job", choices=JOBS, default="run",
                     help="jobs/<JOB>.py to spark-submit (default: run = ingest+train+impute)")
    job.add_argument("--manifest", required=True,
                     help="manifest TSV: local file (uploaded) or s3:// URI")
    job.add_argument("--genome", required=True,
                     help="bundled assembly name (hg19, hg38, mm10) or a chrom.sizes file / s3:// URI")
    job.add_argument("--out", required=True, type=_s3_uri,
                     help="s3:// output prefix (also where a resumed run finds finished stages)")
    job.add_argument("--config", help="predictd TOML config: local file (uploaded) or s3:// URI")
    job.add_argument("--run-id", type=_run_id,
                     help="names the staging prefix and step (default: UTC timestamp)")
    job.add_argument("--spark-conf", action="append", type=_key_value, default=[],
                     metavar="KEY=VALUE", help="extra --conf for spark-submit (repeatable)")
    job.add_argument("--driver-memory", default="12g",
                     help="driver heap; the driver runs on the master node (default 12g)")
    job.add_argument("--on-failure", choices=("continue", "terminate"),
                     help="step failure: CONTINUE or TERMINATE_CLUSTER (default: terminate for a new "
                          "cluster, continue with --add-step)")

    stage = p.add_argument_group("staging and software")
    stage.add_argument("--staging-uri", required=True, type=_s3_uri,
                       help="s3:// prefix for the bootstrap script, jobs and uploaded inputs")
    stage.add_argument("--log-uri", type=_s3_uri,
                       help="s3:// prefix for EMR logs (default: STAGING/logs)")
    stage.add_argument("--package-source",
                       default=os.environ.get("PREDICTD_PACKAGE_SOURCE", "predictd"),
                       help="what pip installs on each node: a PyPI requirement, git+https://... URL, "
                            "s3:// wheel, or a local wheel (uploaded). Default $PREDICTD_PACKAGE_SOURCE "
                            "or 'predictd'")
    stage.add_argument("--bootstrap-uri", type=_s3_uri,
                       help="use this s3:// bootstrap script instead of uploading infra/emr/bootstrap.sh")
    stage.add_argument("--jobs-dir", default=str(REPO_ROOT / "jobs"),
                       help="local directory with run.py/ingest.py/train.py/impute.py "
                            "(default: this checkout's jobs/)")
    stage.add_argument("--python", default=DEFAULT_PYTHON,
                       help=f"python on the nodes for the driver and executors (default {DEFAULT_PYTHON})")

    cl = p.add_argument_group("cluster (ignored with --add-step)")
    cl.add_argument("--name", default="predictd", help="cluster name (default predictd)")
    cl.add_argument("--release-label", default=DEFAULT_RELEASE_LABEL,
                    help=f"EMR release, emr-7.x for Spark 3.5 (default {DEFAULT_RELEASE_LABEL})")
    cl.add_argument("--master-types", default=DEFAULT_MASTER_TYPES,
                    help="on-demand master candidates, comma-separated (first available is used)")
    cl.add_argument("--core-types", default=DEFAULT_WORKER_TYPES,
                    help="core fleet instance types, TYPE or TYPE:WEIGHT, comma-separated")
    cl.add_argument("--task-types", default=DEFAULT_WORKER_TYPES,
                    help="task fleet instance types, TYPE or TYPE:WEIGHT, comma-separated")
    cl.add_argument("--core-spot", type=_positive, default=2,
                    help="core fleet spot target capacity (default 2)")
    cl.add_argument("--core-on-demand", type=_positive, default=0,
                    help="core fleet on-demand target capacity (default 0)")
    cl.add_argument("--task-spot", type=_positive, default=4,
                    help="task fleet spot target capacity; 0 = no task fleet (default 4)")
    cl.add_argument("--spot-timeout-minutes", type=int, default=20,
                    help="how long to wait for spot capacity when provisioning (default 20)")
    cl.add_argument("--spot-timeout-action", choices=("SWITCH_TO_ON_DEMAND", "TERMINATE_CLUSTER"),
                    default="SWITCH_TO_ON_DEMAND",
                    help="what to do when spot capacity is not found in time")
    cl.add_argument("--ebs-gb", type=int, default=128,
                    help="gp3 EBS GiB per worker node, for shuffle and temp bigWigs (default 128)")
    cl.add_argument("--subnet", action="append", default=[],
                    help="EC2 subnet id (repeat: EMR picks the AZ with most spot capacity)")
    cl.add_argument("--key-name", help="EC2 key pair for ssh to the master (optional)")
    cl.add_argument("--service-role", default="EMR_DefaultRole", help="EMR service role")
    cl.add_argument("--instance-profile", default="EMR_EC2_DefaultRole",
                    help="EC2 instance profile of the nodes (needs S3 access to inputs and OUT)")
    cl.add_argument("--tag", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                    help="extra cluster tag (repeatable)")
    cl.add_argument("--keep-alive", action="store_true",
                    help="keep the cluster after the steps (idle-terminated after --idle-timeout)")
    cl.add_argument("--idle-timeout", type=int, default=3600,
                    help="seconds of idleness before a --keep-alive cluster terminates (default 3600)")
    return p


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split off the job's pass-through arguments (after ``--``) and parse the rest.

    Parameters
    ----------
    argv : list of str
        Command line without the program name.

    Returns
    -------
    (argparse.Namespace, list of str)
        Parsed options and the job's extra arguments.
    """
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    else:
        extra = []
    return build_parser().parse_args(argv), extra


# --------------------------------------------------------------------------------------------------
# Planning: uploads, remote paths, job arguments
# --------------------------------------------------------------------------------------------------

def _stage_input(plan: Plan, value: str, remote_name: str, what: str,
                 must_exist: bool = True) -> str | None:
    """Route one file input to the master node; returns its path there (None: not a file)."""
    remote = f"{plan.remote_dir}/{remote_name}"
    if value.startswith("s3://"):
        plan.fetches.append((value, remote))
        return remote
    path = Path(value).expanduser()
    if path.is_file():
        uri = f"{plan.run_prefix}/{remote_name}"
        plan.uploads.append((str(path.resolve()), uri))
        plan.fetches.append((uri, remote))
        return remote
    if must_exist:
        raise LaunchError(f"{what} {value!r} is neither an existing local file nor an s3:// URI")
    return None


def _check_track_uris(manifest: Path) -> None:
    """The cluster's executors read the tracks themselves: a local manifest's ``uri`` column
    must name objects they can reach (s3://, gs://, Azure, http(s)://), not this machine's
    files."""
    lines = [ln for ln in manifest.read_text().splitlines() if ln and not ln.startswith("#")]
    header = lines[0].split("\t") if lines else []
    if "uri" not in header:
        return  # predictd itself names what is wrong with the manifest
    col = header.index("uri")
    for n, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        uri = fields[col] if col < len(fields) else ""
        if not re.match(r"^(s3|gs|az|abfss?|wasbs?|https?)://", uri, re.IGNORECASE):
            raise LaunchError(f"--manifest {manifest}, row {n}: track {uri!r} is a local path; "
                              "the cluster reads tracks by s3://, gs://, Azure or http(s):// URI")


def _job_files(jobs_dir: Path, job: str) -> list[Path]:
    if not (jobs_dir / f"{job}.py").is_file():
        raise LaunchError(f"job script {jobs_dir / (job + '.py')} does not exist (see --jobs-dir)")
    return [jobs_dir / f"{name}.py" for name in JOBS if (jobs_dir / f"{name}.py").is_file()]


def make_plan(args: argparse.Namespace, extra: list[str]) -> Plan:
    """Decide uploads, the master node's file layout and the job's command line.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options.
    extra : list of str
        Pass-through job arguments.

    Returns
    -------
    Plan

    Raises
    ------
    LaunchError
        A local input does not exist.
    """
    run_id = args.run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    plan = Plan(run_id=run_id, staging_uri=args.staging_uri)
    # what EMR or the job would only refuse once the cluster is up (and billed)
    m = re.fullmatch(r"emr-(\d+)\.\d+\.\d+", args.release_label)
    if not m or int(m.group(1)) < 7:
        raise LaunchError(f"--release-label {args.release_label!r}: predictd needs Spark >= 3.5, "
                          "i.e. emr-7.0.0 or later")
    if args.idle_timeout < 60:
        raise LaunchError(f"--idle-timeout {args.idle_timeout}: EMR's minimum is 60 seconds")
    if "--out" in extra or any(a.startswith("--out=") for a in extra):
        raise LaunchError("give --out to launch.py itself, not after --: the cluster is tagged "
                          "with it and its staging is made for it")

    for job_file in _job_files(Path(args.jobs_dir), args.job):
        uri = f"{plan.run_prefix}/jobs/{job_file.name}"
        plan.uploads.append((str(job_file), uri))
    # One recursive copy brings every job script, so ingest/train/impute steps can reuse the dir.
    plan.fetches.append((f"{plan.run_prefix}/jobs/", f"{plan.remote_dir}/jobs/"))

    manifest = _stage_input(plan, args.manifest, "manifest.tsv", "--manifest")
    if not args.manifest.startswith("s3://"):
        _check_track_uris(Path(args.manifest).expanduser())
    # A genome is usually a bundled assembly name; only a file or s3:// URI is staged.
    genome = _stage_input(plan, args.genome, "genome.chrom.sizes", "--genome", must_exist=False)
    if genome is None and ("/" in args.genome or args.genome.endswith(".sizes")):
        raise LaunchError(f"--genome {args.genome!r} looks like a path but is not a local file")
    if genome is None and args.genome not in BUNDLED_GENOMES:
        raise LaunchError(f"--genome {args.genome!r}: not a bundled assembly "
                          f"({', '.join(BUNDLED_GENOMES)}) nor a chrom.sizes file or s3:// URI")
    job_args = ["--manifest", manifest, "--genome", genome or args.genome, "--out", args.out]
    if args.config:
        job_args += ["--config", _stage_input(plan, args.config, "config.toml", "--config")]
    plan.job_args = job_args + list(extra)

    source = args.package_source
    if source.endswith(".whl") and not source.startswith(("s3://", "http://", "https://")):
        wheel = Path(source).expanduser()
        if not wheel.is_file():
            raise LaunchError(f"--package-source wheel {source!r} does not exist")
        source = f"{plan.run_prefix}/{wheel.name}"
        plan.uploads.append((str(wheel.resolve()), source))
    plan.package_source = source

    if args.bootstrap_uri:
        plan.bootstrap_uri = args.bootstrap_uri
    elif not args.add_step:
        plan.bootstrap_uri = f"{plan.run_prefix}/bootstrap.sh"
        plan.uploads.append((str(BOOTSTRAP_SCRIPT), plan.bootstrap_uri))
    return plan


# --------------------------------------------------------------------------------------------------
# Request building (pure functions of args + plan: what --dry-run prints is what is sent)
# --------------------------------------------------------------------------------------------------

def _action_on_failure(args: argparse.Namespace) -> str:
    choice = args.on_failure or ("continue" if args.add_step else "terminate")
    return {"continue": "CONTINUE", "terminate": "TERMINATE_CLUSTER"}[choice]


def spark_submit_args(args: argparse.Namespace, plan: Plan) -> list[str]:
    """``spark-submit`` command line of the job step.

    Client deploy mode keeps the driver on the on-demand master node: in cluster mode the driver
    would live in a YARN container on a spot node, and one interruption would fail the whole step.

    Parameters
    ----------
    args : argparse.Namespace
    plan : Plan

    Returns
    -------
    list of str
    """
    conf = {
        "spark.pyspark.python": args.python,
        "spark.pyspark.driver.python": args.python,
        "spark.yarn.appMasterEnv.PYSPARK_PYTHON": args.python,
        "spark.executorEnv.PYSPARK_PYTHON": args.python,
        # Tolerate executors vanishing with their spot node instead of failing the job.
        "spark.task.maxFailures": "8",
        "spark.stage.maxConsecutiveAttempts": "8",
    }
    conf.update(dict(args.spark_conf))
    cmd = ["spark-submit", "--master", "yarn", "--deploy-mode", "client",
           "--name", f"predictd-{args.job}-{plan.run_id}", "--driver-memory", args.driver_memory]
    for key in sorted(conf):
        cmd += ["--conf", f"{key}={conf[key]}"]
    return cmd + [f"{plan.remote_dir}/jobs/{args.job}.py", *plan.job_args]


def build_steps(args: argparse.Namespace, plan: Plan) -> list[dict]:
    """The staging step (copy the run's files onto the master) and the spark-submit step.

    Parameters
    ----------
    args : argparse.Namespace
    plan : Plan

    Returns
    -------
    list of dict
        EMR ``StepConfig`` objects.
    """
    on_failure = _action_on_failure(args)
    commands = ["set -euo pipefail", f"mkdir -p {shlex.quote(plan.remote_dir)}"]
    for uri, remote in plan.fetches:
        recursive = " --recursive" if uri.endswith("/") else ""
        commands.append(f"aws s3 cp --only-show-errors{recursive} {shlex.quote(uri)} "
                        f"{shlex.quote(remote)}")
    stage = {
        "Name": f"predictd stage {plan.run_id}",
        "ActionOnFailure": on_failure,
        "HadoopJarStep": {"Jar": "command-runner.jar",
                          "Args": ["bash", "-c", "; ".join(commands)]},
    }
    submit = {
        "Name": f"predictd {args.job} {plan.run_id}",
        "ActionOnFailure": on_failure,
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": spark_submit_args(args, plan)},
    }
    return [stage, submit]


def _fleet_types(spec: str, ebs_gb: int | None) -> list[dict]:
    configs = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, weight = item.partition(":")
        config: dict = {"InstanceType": name}
        if weight:
            if not weight.isdigit() or int(weight) < 1:
                raise LaunchError(f"instance type {item!r}: weight must be a positive integer")
            config["WeightedCapacity"] = int(weight)
        if ebs_gb:
            config["EbsConfiguration"] = {
                "EbsBlockDeviceConfigs": [{
                    "VolumeSpecification": {"SizeInGB": ebs_gb, "VolumeType": "gp3"},
                    "VolumesPerInstance": 1,
                }],
                "EbsOptimized": True,
            }
        configs.append(config)
    if not configs:
        raise LaunchError(f"empty instance type list {spec!r}")
    if len(configs) > 30:
        raise LaunchError(f"at most 30 instance types per fleet, got {len(configs)}")
    return configs


def _spot_spec(args: argparse.Namespace) -> dict:
    return {
        "SpotSpecification": {
            "AllocationStrategy": "capacity-optimized",
            "TimeoutDurationMinutes": args.spot_timeout_minutes,
            "TimeoutAction": args.spot_timeout_action,
        },
        "OnDemandSpecification": {"AllocationStrategy": "lowest-price"},
    }


def build_instance_fleets(args: argparse.Namespace) -> list[dict]:
    """Master (on-demand), core (spot, optional on-demand floor) and task (spot) fleets.

    Parameters
    ----------
    args : argparse.Namespace

    Returns
    -------
    list of dict
        ``InstanceFleetConfig`` objects.
    """
    if args.core_spot + args.core_on_demand < 1:
        raise LaunchError("the core fleet needs capacity: --core-spot + --core-on-demand >= 1")
    fleets = [
        {
            "Name": "master",
            "InstanceFleetType": "MASTER",
            "TargetOnDemandCapacity": 1,
            "InstanceTypeConfigs": _fleet_types(args.master_types, None),
            "LaunchSpecifications": {
                "OnDemandSpecification": {"AllocationStrategy": "lowest-price"}},
        },
        {
            "Name": "core",
            "InstanceFleetType": "CORE",
            "TargetSpotCapacity": args.core_spot,
            "TargetOnDemandCapacity": args.core_on_demand,
            "InstanceTypeConfigs": _fleet_types(args.core_types, args.ebs_gb),
            "LaunchSpecifications": _spot_spec(args),
        },
    ]
    if args.task_spot:
        fleets.append({
            "Name": "task",
            "InstanceFleetType": "TASK",
            "TargetSpotCapacity": args.task_spot,
            "TargetOnDemandCapacity": 0,
            "InstanceTypeConfigs": _fleet_types(args.task_types, args.ebs_gb),
            "LaunchSpecifications": _spot_spec(args),
        })
    return fleets


#: Where EMR's Spark history server (and the console's persistent application UI, which keeps a
#: cluster's Spark UI viewable after it terminates) read event logs.
EMR_EVENT_LOG_DIR = "hdfs:///var/log/spark/apps"


def build_configurations(args: argparse.Namespace) -> list[dict]:
    """Cluster-wide Spark settings: the python to use, graceful handling of spot loss, and event
    logs where the history server reads them."""
    return [
        {
            "Classification": "spark-env",
            "Configurations": [{
                "Classification": "export",
                "Properties": {"PYSPARK_PYTHON": args.python,
                               "PYSPARK_DRIVER_PYTHON": args.python},
            }],
            "Properties": {},
        },
        {
            "Classification": "spark-defaults",
            "Properties": {
                # On a spot interruption notice, move cached/shuffle blocks off the node instead
                # of recomputing them after it disappears.
                "spark.decommission.enabled": "true",
                "spark.storage.decommission.enabled": "true",
                "spark.storage.decommission.rddBlocks.enabled": "true",
                "spark.storage.decommission.shuffleBlocks.enabled": "true",
                "spark.pyspark.python": args.python,
                # EMR's defaults already say so; stated here so that a finished (or terminated)
                # run stays inspectable even if a release changes them: the writer's directory
                # and the history server's must be the same
                "spark.eventLog.enabled": "true",
                "spark.eventLog.dir": EMR_EVENT_LOG_DIR,
                "spark.history.fs.logDirectory": EMR_EVENT_LOG_DIR,
            },
        },
    ]


def build_tags(args: argparse.Namespace, plan: Plan) -> list[dict]:
    tags = {"project": "predictd", "predictd:run-id": plan.run_id, "predictd:out": args.out}
    tags.update(dict(args.tag))
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def build_run_job_flow_request(args: argparse.Namespace, plan: Plan) -> dict:
    """The complete ``RunJobFlow`` request.

    Parameters
    ----------
    args : argparse.Namespace
    plan : Plan

    Returns
    -------
    dict
        Keyword arguments for ``boto3.client("emr").run_job_flow``.
    """
    instances: dict = {
        "InstanceFleets": build_instance_fleets(args),
        "KeepJobFlowAliveWhenNoSteps": bool(args.keep_alive),
        "TerminationProtected": False,
    }
    if args.subnet:
        instances["Ec2SubnetIds"] = list(args.subnet)
    if args.key_name:
        instances["Ec2KeyName"] = args.key_name
    request = {
        "Name": args.name,
        "ReleaseLabel": args.release_label,
        "LogUri": (args.log_uri or f"{args.staging_uri}/logs") + "/",
        "Applications": [{"Name": "Spark"}],
        "Instances": instances,
        "BootstrapActions": [{
            "Name": "install predictd",
            "ScriptBootstrapAction": {
                "Path": plan.bootstrap_uri,
                "Args": ["--package", plan.package_source, "--python", args.python],
            },
        }],
        "Steps": build_steps(args, plan),
        "Configurations": build_configurations(args),
        "ServiceRole": args.service_role,
        "JobFlowRole": args.instance_profile,
        "VisibleToAllUsers": True,
        "StepConcurrencyLevel": 1,
        "ScaleDownBehavior": "TERMINATE_AT_TASK_COMPLETION",
        "Tags": build_tags(args, plan),
    }
    if args.keep_alive:
        request["AutoTerminationPolicy"] = {"IdleTimeout": args.idle_timeout}
    return request


def build_add_steps_request(args: argparse.Namespace, plan: Plan) -> dict:
    """The ``AddJobFlowSteps`` request for ``--add-step``."""
    return {"JobFlowId": args.add_step, "Steps": build_steps(args, plan)}


# --------------------------------------------------------------------------------------------------
# AWS calls
# --------------------------------------------------------------------------------------------------

def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


class AwsCallError(Exception):
    """An AWS call failed; the message names the operation or the file being uploaded."""


def upload(s3_client, plan: Plan) -> None:
    """Copy the plan's local files to S3 (private: no ACL is set, the bucket's policy applies)."""
    import boto3.exceptions
    from botocore.exceptions import BotoCoreError, ClientError

    for local, uri in plan.uploads:
        bucket, key = _split_s3(uri)
        try:
            s3_client.upload_file(local, bucket, key)
        except (boto3.exceptions.Boto3Error, BotoCoreError, ClientError, OSError) as err:
            raise AwsCallError(f"uploading {local} to {uri} failed: {err}") from err
        print(f"uploaded {local} -> {uri}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args, extra = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        plan = make_plan(args, extra)
        if args.add_step:
            request, operation = build_add_steps_request(args, plan), "AddJobFlowSteps"
        else:
            request, operation = build_run_job_flow_request(args, plan), "RunJobFlow"
    except LaunchError as err:
        print(f"launch.py: {err}", file=sys.stderr)
        return 2

    if args.dry_run:
        for local, uri in plan.uploads:
            print(f"would upload {local} -> {uri}", file=sys.stderr)
        print(f"would call EMR {operation}:", file=sys.stderr)
        print(json.dumps(request, indent=2, sort_keys=True))
        return 0

    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        session = boto3.session.Session(region_name=args.region)
        upload(session.client("s3"), plan)
        emr = session.client("emr")
        try:
            if args.add_step:
                response = emr.add_job_flow_steps(**request)
                result = {"cluster_id": args.add_step, "step_ids": response["StepIds"]}
            else:
                response = emr.run_job_flow(**request)
                result = {"cluster_id": response["JobFlowId"],
                          "cluster_arn": response.get("ClusterArn")}
        except (BotoCoreError, ClientError) as err:
            raise AwsCallError(f"EMR {operation} failed: {err}") from err
    except (AwsCallError, BotoCoreError) as err:
        # The messages carry the API's error text, never the credentials.
        print(f"launch.py: {err}", file=sys.stderr)
        return 1
    result.update(run_id=plan.run_id, out=args.out)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
