#!/usr/bin/env python3
"""Deploy an HDInsight Spark cluster for predictd and submit pipeline runs to it through Livy.

Subcommands:

``deploy``
    Renders the parameters of ``template.json`` and runs ``az deployment group create``. Plain
    parameters go on the command line; the passwords go into a 0600 temporary parameters file
    (removed afterwards) so they never appear in ``ps`` or in the printed command.
``submit``
    Uploads ``jobs/*.py`` and any local manifest / config / chrom.sizes to the cluster's default
    storage (``az storage blob upload``), then POSTs a Livy batch to
    ``https://<cluster>.azurehdinsight.net/livy/batches`` that runs ``jobs/<job>.py`` with the
    user's arguments. Livy runs the driver in YARN cluster mode, so the run's small files reach
    it through ``files`` (localized into the driver's working directory). ``--out`` defaults to
    the cluster's own storage account,
    ``abfss://<container>@<account>.dfs.core.windows.net/<prefix>/runs/<run id>/out``; when OUT
    is on Azure, the job gets a short-lived SAS of the container (``az storage container
    generate-sas``) as ``AZURE_STORAGE_SAS_TOKEN`` in the driver's and executors' environment,
    so no AWS credential and no account key is involved. ``--storage-credential identity``
    sends none: predictd then uses the nodes' managed identity (DefaultAzureCredential).

``--dry-run`` prints every ``az`` command line, then the Livy request (``POST URL`` and the JSON
body), and executes nothing. Secrets come from the environment (``PREDICTD_HDI_PASSWORD`` for the
cluster login, ``PREDICTD_HDI_SSH_PASSWORD`` when no SSH key is given) and are never printed.

Example
-------
    python infra/hdinsight/deploy.py deploy --resource-group rg --cluster-name predictd1 \\
        --storage-account predictd1store --script-uri https://.../install-predictd.sh \\
        --ssh-public-key-file ~/.ssh/id_ed25519.pub --worker-count 4 --dry-run
    python infra/hdinsight/deploy.py submit --cluster-name predictd1 --storage-account predictd1store \\
        --manifest m.tsv --genome hg38 --dry-run
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
TEMPLATE = HERE / "template.json"
JOBS = ("run", "ingest", "train", "impute")
#: Written by install-predictd.sh on every node.
NODE_PYTHON = "/usr/local/bin/predictd-python"
PASSWORD_ENV = "PREDICTD_HDI_PASSWORD"
SSH_PASSWORD_ENV = "PREDICTD_HDI_SSH_PASSWORD"
#: Shown instead of the temporary secrets file's path, which only exists while az runs.
SECRETS_FILE_PLACEHOLDER = "<secrets.parameters.json>"
#: Shown instead of the container SAS in --dry-run output (the real one is never printed).
SAS_PLACEHOLDER = "<sas from az storage container generate-sas>"
#: The environment variable predictd reads a SAS from, set for the driver and the executors.
SAS_ENV = "AZURE_STORAGE_SAS_TOKEN"
#: The assemblies predictd bundles (predictd.genome.BUNDLED_GENOMES; this script needs only
#: the standard library, so the names are repeated here).
BUNDLED_GENOMES = ("hg19", "hg38", "mm10")
#: URI schemes of Azure storage, in every spelling predictd reads.
AZURE_URI_RE = re.compile(r"^(az|abfss?|wasbs?)://", re.IGNORECASE)


class DeployError(Exception):
    """Bad arguments, missing files or secrets; printed as one line, exit code 2."""


# --------------------------------------------------------------------------------------------------
# deploy
# --------------------------------------------------------------------------------------------------

def deployment_parameters(args: argparse.Namespace) -> tuple[dict[str, object], dict[str, str]]:
    """Template parameters, split into plain values and secrets.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``deploy`` options.

    Returns
    -------
    (dict, dict)
        Plain parameters (safe to print and pass on the command line) and secret ones.
    """
    # what the template would refuse only once Azure has the deployment
    check_storage_account(args)
    if args.worker_count < 1:
        raise DeployError(f"--worker-count {args.worker_count}: at least 1")
    if not re.match(r"^https://", args.script_uri):
        raise DeployError("--script-uri: an https:// URL the cluster can read while it is created")
    if 0 < len(os.environ.get(PASSWORD_ENV, "")) < 10:
        raise DeployError(f"{PASSWORD_ENV}: at least 10 characters (HDInsight's rule)")
    plain: dict[str, object] = {
        "clusterName": args.cluster_name,
        "storageAccountName": args.storage_account,
        "clusterLoginUserName": args.login_user,
        "sshUserName": args.ssh_user,
        "headNodeSize": args.head_size,
        "workerNodeSize": args.worker_size,
        "workerNodeCount": args.worker_count,
        "predictdPackageSource": args.package_source,
        "pythonVersion": args.python_version,
        "clusterVersion": args.cluster_version,
    }
    if args.location:
        plain["location"] = args.location
    if args.ssh_public_key_file:
        key_path = Path(args.ssh_public_key_file).expanduser()
        if not key_path.is_file():
            raise DeployError(f"--ssh-public-key-file {key_path} does not exist")
        plain["sshPublicKey"] = key_path.read_text().strip()

    # the script's URI usually carries a SAS: a secure parameter, in the secrets file (not on
    # the command line, not in the deployment's history)
    secrets: dict[str, str] = {"scriptActionUri": args.script_uri}
    password = os.environ.get(PASSWORD_ENV, "")
    if password:
        secrets["clusterLoginPassword"] = password
    elif not args.dry_run:
        raise DeployError(f"set {PASSWORD_ENV} to the cluster login password (>= 10 characters)")
    if not args.ssh_public_key_file:
        ssh_password = os.environ.get(SSH_PASSWORD_ENV, "")
        if ssh_password:
            secrets["sshPassword"] = ssh_password
        elif not args.dry_run:
            raise DeployError(f"give --ssh-public-key-file or set {SSH_PASSWORD_ENV}")
    return plain, secrets


def check_storage_account(args: argparse.Namespace) -> None:
    """Azure's rule for a storage account's name: 3-24 lower-case letters and digits."""
    if not re.fullmatch(r"[a-z0-9]{3,24}", args.storage_account):
        raise DeployError(f"--storage-account {args.storage_account!r}: 3-24 lower-case letters "
                          "and digits (Azure's rule for account names)")


def _param_arg(key: str, value: object) -> str:
    # az parses KEY=VALUE with the value as a string; ints must stay JSON to match "type": "int".
    return f"{key}={json.dumps(value) if isinstance(value, int) else value}"


def deploy_command(args: argparse.Namespace, plain: dict[str, object], secrets_ref: str | None) -> list[str]:
    """``az deployment group create`` argv.

    Parameters
    ----------
    args : argparse.Namespace
    plain : dict
        Non-secret template parameters.
    secrets_ref : str or None
        Path of the secrets parameters file (None when there are no secrets).

    Returns
    -------
    list of str
    """
    cmd = [args.az, "deployment", "group", "create",
           "--resource-group", args.resource_group,
           "--name", args.deployment_name or f"predictd-{args.cluster_name}",
           "--template-file", str(TEMPLATE),
           "--parameters", *[_param_arg(k, v) for k, v in sorted(plain.items())]]
    if secrets_ref:
        cmd += ["--parameters", f"@{secrets_ref}"]
    return cmd


def cmd_deploy(args: argparse.Namespace) -> int:
    plain, secrets = deployment_parameters(args)
    if args.dry_run:
        # The real command always carries the login password in a temporary file.
        print(shlex.join(deploy_command(args, plain, SECRETS_FILE_PLACEHOLDER)))
        print(f"(secrets file would hold: {', '.join(sorted(secrets)) or 'nothing set yet'})",
              file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="predictd-hdi-") as tmp:
        ref = None
        if secrets:
            secrets_path = Path(tmp) / "secrets.parameters.json"
            fd = os.open(secrets_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({
                    "$schema": "https://schema.management.azure.com/schemas/2019-04-01/"
                               "deploymentParameters.json#",
                    "contentVersion": "1.0.0.0",
                    "parameters": {k: {"value": v} for k, v in secrets.items()},
                }, fh)
            ref = str(secrets_path)
        cmd = deploy_command(args, plain, ref)
        print("+ " + shlex.join(deploy_command(args, plain, SECRETS_FILE_PLACEHOLDER if ref else None)),
              file=sys.stderr)
        return _run(cmd)


# --------------------------------------------------------------------------------------------------
# submit
# --------------------------------------------------------------------------------------------------

def _default_fs(args: argparse.Namespace) -> str:
    """The cluster's default file system, as its Hadoop (and so Livy's ``file``/``files``)
    reads it: the template attaches the account through its blob endpoint."""
    container = args.container or args.cluster_name.lower()
    return f"wasbs://{container}@{args.storage_account}.blob.core.windows.net"


def default_out(args: argparse.Namespace, run_id: str) -> str:
    """The run's OUT on the cluster's own storage account, in the ABFS spelling."""
    container = args.container or args.cluster_name.lower()
    return (f"abfss://{container}@{args.storage_account}.dfs.core.windows.net/"
            f"{args.remote_prefix.strip('/')}/runs/{run_id}/out")


def _needs_sas(args: argparse.Namespace, out: str) -> bool:
    if args.storage_credential == "identity":
        return False
    return args.storage_credential == "sas" or bool(AZURE_URI_RE.match(out))


def out_container(args: argparse.Namespace, out: str) -> tuple[str, str]:
    """(storage account, container) the job writes OUT to: those the URI names
    (``abfss://C@A.dfs…``, ``wasbs://C@A.blob…``), the cluster's account for ``az://C/…``, else
    the cluster's own container."""
    m = re.match(r"^(?:abfss?|wasbs?)://([^@/]+)@([^./]+)\.", out, re.IGNORECASE)
    if m:
        return m.group(2), m.group(1)
    m = re.match(r"^(?:az|abfss?)://([^@/]+)(?:/|$)", out, re.IGNORECASE)
    if m:
        return args.storage_account, m.group(1)
    return args.storage_account, args.container or args.cluster_name.lower()


def sas_command(args: argparse.Namespace, expiry: datetime.datetime, out: str) -> list[str]:
    """``az storage container generate-sas`` for the job: read, add, create, write, delete, list
    on OUT's container (:func:`out_container`) until ``expiry``; a user delegation SAS with
    ``--storage-auth-mode login`` (no account key involved), else one signed with the account
    key."""
    account, container = out_container(args, out)
    cmd = [args.az, "storage", "container", "generate-sas", "--account-name", account,
           "--name", container, "--permissions", "racwdl", "--https-only",
           "--expiry", expiry.strftime("%Y-%m-%dT%H:%MZ"), "--output", "tsv", "--only-show-errors"]
    if args.storage_auth_mode == "login":
        cmd += ["--auth-mode", "login", "--as-user"]
    else:
        cmd += ["--auth-mode", "key"]
    return cmd


def plan_submit(args: argparse.Namespace, extra: list[str]) -> tuple[list[list[str]], dict]:
    """Upload commands and the Livy batch body of one run.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``submit`` options.
    extra : list of str
        Job arguments given after ``--``.

    Returns
    -------
    (list of argv, dict)
        ``az`` upload commands (empty with ``--no-upload``) and the Livy ``POST /batches`` body.
    """
    run_id = args.run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", run_id):
        raise DeployError(f"--run-id {run_id!r}: letters, digits, '.', '_' and '-' only (it "
                          "names a storage folder)")
    check_storage_account(args)
    if not re.fullmatch(r"\d+[kmgt]?", args.executor_memory, re.IGNORECASE) or \
            args.executor_cores < 1:
        raise DeployError(f"--executor-memory {args.executor_memory!r} / --executor-cores "
                          f"{args.executor_cores}: a size such as 20g, and at least one core")
    if args.sas_hours < 1:
        raise DeployError(f"--sas-hours {args.sas_hours:g}: at least 1 (the job must finish "
                          "before its storage credential expires)")
    container = args.container or args.cluster_name.lower()
    prefix = f"{args.remote_prefix.strip('/')}/runs/{run_id}"
    base_uri = f"{_default_fs(args)}/{prefix}"
    uploads: list[list[str]] = []
    az_blob = ["--account-name", args.storage_account, "--container-name", container,
               "--auth-mode", args.storage_auth_mode, "--overwrite", "--only-show-errors"]

    jobs_dir = Path(args.jobs_dir)
    if not (jobs_dir / f"{args.job}.py").is_file():
        raise DeployError(f"job script {jobs_dir / (args.job + '.py')} does not exist (see --jobs-dir)")
    uploads.append([args.az, "storage", "blob", "upload-batch", "--account-name", args.storage_account,
                    "--destination", container, "--destination-path", f"{prefix}/jobs",
                    "--source", str(jobs_dir.resolve()), "--pattern", "*.py",
                    "--auth-mode", args.storage_auth_mode, "--overwrite", "--only-show-errors"])

    files: list[str] = []

    def stage(value: str, name: str, what: str, must_exist: bool = True) -> str | None:
        # Livy localizes `files` into the driver's working directory under the #alias name.
        if re.match(r"^(wasbs?|abfss?)://", value):
            files.append(f"{value}#{name}")
            return name
        path = Path(value).expanduser()
        if path.is_file():
            uploads.append([args.az, "storage", "blob", "upload", *az_blob,
                            "--name", f"{prefix}/{name}", "--file", str(path.resolve())])
            files.append(f"{base_uri}/{name}#{name}")
            return name
        if must_exist:
            raise DeployError(f"{what} {value!r} is neither a local file nor a wasbs:// / abfss:// URI")
        return None

    if "--out" in extra or any(a.startswith("--out=") for a in extra):
        raise DeployError("give --out to submit itself, not after --: its storage credential "
                          "is made for it")
    job_args = ["--manifest", stage(args.manifest, "manifest.tsv", "--manifest")]
    genome = stage(args.genome, "genome.chrom.sizes", "--genome", must_exist=False)
    if genome is None and ("/" in args.genome or args.genome.endswith(".sizes")):
        raise DeployError(f"--genome {args.genome!r} looks like a path but is not a local file")
    if genome is None and args.genome not in BUNDLED_GENOMES:
        raise DeployError(f"--genome {args.genome!r}: not a bundled assembly "
                          f"({', '.join(BUNDLED_GENOMES)}) nor a chrom.sizes file or URI")
    out = args.out or default_out(args, run_id)
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]", out):
        raise DeployError(f"--out {out!r}: a storage URI (abfss://…, az://CONTAINER/…, s3://…); "
                          "a path on the cluster's disks is lost with the cluster")
    job_args += ["--genome", genome or args.genome, "--out", out]
    if args.config:
        job_args += ["--config", stage(args.config, "config.toml", "--config")]
    job_args += extra

    conf = {
        "spark.pyspark.python": args.python,
        "spark.yarn.appMasterEnv.PYSPARK_PYTHON": args.python,
        "spark.executorEnv.PYSPARK_PYTHON": args.python,
        "spark.task.maxFailures": "8",
    }
    for item in args.spark_conf:
        key, sep, value = item.partition("=")
        if not sep:
            raise DeployError(f"--spark-conf expects KEY=VALUE, got {item!r}")
        conf[key] = value
    if _needs_sas(args, out):
        # Filled in by cmd_submit; Spark's UI redacts conf values whose keys contain "token".
        conf[f"spark.yarn.appMasterEnv.{SAS_ENV}"] = SAS_PLACEHOLDER
        conf[f"spark.executorEnv.{SAS_ENV}"] = SAS_PLACEHOLDER
    body = {
        "file": f"{base_uri}/jobs/{args.job}.py",
        "args": job_args,
        "files": files,
        "name": f"predictd-{args.job}-{run_id}",
        "conf": conf,
        "driverMemory": args.driver_memory,
        "executorMemory": args.executor_memory,
        "executorCores": args.executor_cores,
    }
    if args.num_executors:
        body["numExecutors"] = args.num_executors
    if args.no_upload:
        uploads = []
    return uploads, body


def livy_url(args: argparse.Namespace) -> str:
    """The Livy batches endpoint (``--livy-url`` overrides, e.g. an SSH tunnel to port 8998)."""
    return args.livy_url or f"https://{args.cluster_name}.azurehdinsight.net/livy/batches"


def _livy_request(url: str, user: str, password: str, body: dict | None = None) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    headers = {"Content-Type": "application/json", "X-Requested-By": user,
               "Authorization": f"Basic {token}"}
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers,
                                 method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read().decode() or "{}")


def _generate_sas(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    except FileNotFoundError:
        raise DeployError(f"{cmd[0]!r} not found: install the Azure CLI (az) and run 'az login'")
    token = proc.stdout.strip().strip('"').lstrip("?")
    if proc.returncode or not token:
        first = (proc.stderr.strip().splitlines() or ["no token printed"])[0]
        raise DeployError(f"az storage container generate-sas failed: {first}")
    return token


def cmd_submit(args: argparse.Namespace, extra: list[str]) -> int:
    uploads, body = plan_submit(args, extra)
    url = livy_url(args)
    sas_keys = [k for k, v in body["conf"].items() if v == SAS_PLACEHOLDER]
    expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=args.sas_hours)
    out = body["args"][body["args"].index("--out") + 1]
    if args.dry_run:
        if sas_keys:
            print(shlex.join(sas_command(args, expiry, out)))
        for cmd in uploads:
            print(shlex.join(cmd))
        print(f"POST {url}")
        print(json.dumps(body, indent=2, sort_keys=True))
        return 0
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        raise DeployError(f"set {PASSWORD_ENV} to the cluster login password (Livy uses basic auth)")
    if sas_keys:
        cmd = sas_command(args, expiry, out)
        print("+ " + shlex.join(cmd), file=sys.stderr)
        token = _generate_sas(cmd)
        body = {**body, "conf": {**body["conf"], **{k: token for k in sas_keys}}}
    for cmd in uploads:
        print("+ " + shlex.join(cmd), file=sys.stderr)
        code = _run(cmd)
        if code:
            return code
    try:
        batch = _livy_request(url, args.login_user, password, body)
        print(json.dumps({"batch_id": batch.get("id"), "state": batch.get("state"),
                          "name": body["name"], "url": f"{url.rstrip('/')}/{batch.get('id')}"},
                         sort_keys=True))
        if args.wait:
            return _wait(f"{url.rstrip('/')}/{batch.get('id')}/state", args, password)
    except (urllib.error.URLError, OSError, ValueError) as err:
        print(f"deploy.py: Livy request to {url} failed: {err}", file=sys.stderr)
        return 1
    return 0


def _wait(state_url: str, args: argparse.Namespace, password: str) -> int:
    # Livy batch states: not_started, starting, running, busy, idle → success | dead | killed.
    while True:
        state = _livy_request(state_url, args.login_user, password).get("state")
        print(f"livy batch state: {state}", file=sys.stderr)
        if state == "success":
            return 0
        if state in ("dead", "killed", "error"):
            return 1
        time.sleep(args.poll_seconds)


def _run(cmd: list[str]) -> int:
    try:
        return subprocess.run(cmd, check=False).returncode
    except FileNotFoundError:
        raise DeployError(f"{cmd[0]!r} not found: install the Azure CLI (az) and run 'az login'")


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------

class OneLineErrors(argparse.ArgumentParser):
    """A bad argument is one line naming it (argparse prints its whole usage block first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface; for ``submit``, arguments after ``--`` go to the job."""
    p = OneLineErrors(prog="deploy.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cluster-name", required=True, help="HDInsight cluster name")
    common.add_argument("--storage-account", required=True, help="default storage account name")
    common.add_argument("--login-user", default="admin", help="cluster (gateway) login user")
    common.add_argument("--dry-run", action="store_true",
                        help="print the az command line(s) and Livy request; execute nothing")
    common.add_argument("--az", default="az", help="Azure CLI executable (default: az on PATH)")

    d = sub.add_parser("deploy", parents=[common], help="create the cluster from template.json")
    d.add_argument("--resource-group", required=True)
    d.add_argument("--location", help="region (default: the resource group's)")
    d.add_argument("--deployment-name", help="ARM deployment name (default predictd-CLUSTER)")
    d.add_argument("--script-uri", required=True,
                   help="readable URI of install-predictd.sh (the script action)")
    d.add_argument("--package-source", default=os.environ.get("PREDICTD_PACKAGE_SOURCE", "predictd"),
                   help="what the script action pip-installs (default $PREDICTD_PACKAGE_SOURCE "
                        "or 'predictd')")
    d.add_argument("--python-version", default="3.10", help="python of the predictd env (default 3.10)")
    d.add_argument("--cluster-version", default="5.1", help="HDInsight version (default 5.1)")
    d.add_argument("--worker-count", type=int, default=4, help="worker nodes (default 4)")
    d.add_argument("--worker-size", default="Standard_E8_V3", help="worker VM size")
    d.add_argument("--head-size", default="Standard_E8_V3", help="head node VM size")
    d.add_argument("--ssh-user", default="sshuser")
    d.add_argument("--ssh-public-key-file",
                   help=f"SSH public key (otherwise ${SSH_PASSWORD_ENV} is the SSH password)")

    s = sub.add_parser("submit", parents=[common], help="run a predictd job as a Livy batch")
    s.add_argument("--job", choices=JOBS, default="run")
    s.add_argument("--manifest", required=True, help="local file (uploaded) or wasbs:// / abfss:// URI")
    s.add_argument("--genome", required=True, help="assembly name, or chrom.sizes file / URI")
    s.add_argument("--out", help="output prefix as predictd understands it (default: the cluster's "
                                 "storage, abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/PREFIX/runs/RUN_ID/out)")
    s.add_argument("--config", help="predictd TOML: local file (uploaded) or storage URI")
    s.add_argument("--container", help="default storage container (default: cluster name)")
    s.add_argument("--remote-prefix", default="predictd", help="folder in the container for runs")
    s.add_argument("--jobs-dir", default=str(REPO_ROOT / "jobs"), help="local jobs/ directory")
    s.add_argument("--run-id", help="names the upload folder and the batch (default: UTC timestamp)")
    s.add_argument("--python", default=NODE_PYTHON, help=f"python on the nodes (default {NODE_PYTHON})")
    s.add_argument("--driver-memory", default="8g")
    s.add_argument("--executor-memory", default="20g")
    s.add_argument("--executor-cores", type=int, default=4)
    s.add_argument("--num-executors", type=int, help="default: Spark's dynamic allocation")
    s.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--livy-url", help="override the Livy batches URL (e.g. http://localhost:8998/batches)")
    s.add_argument("--storage-auth-mode", choices=("key", "login"), default="key",
                   help="az storage auth: key (az looks up the account key; needs ARM rights) or "
                        "login (needs the 'Storage Blob Data Contributor' role)")
    s.add_argument("--storage-credential", choices=("auto", "sas", "identity"), default="auto",
                   help="how the job reaches Azure storage: sas (a container SAS made by az, passed "
                        "as AZURE_STORAGE_SAS_TOKEN), identity (the nodes' managed identity), auto "
                        "(sas when OUT is on Azure; default)")
    s.add_argument("--sas-hours", type=float, default=48.0,
                   help="lifetime of the job's SAS in hours (default 48; longer than the run)")
    s.add_argument("--no-upload", action="store_true", help="files are already in storage")
    s.add_argument("--wait", action="store_true", help="poll until the batch finishes")
    s.add_argument("--poll-seconds", type=float, default=30.0)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    try:
        if args.command == "deploy":
            if extra:
                raise DeployError("deploy takes no job arguments after '--'")
            return cmd_deploy(args)
        return cmd_submit(args, extra)
    except DeployError as err:
        print(f"deploy.py: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
