"""predictd on Azure Blob Storage end to end, against Azurite on 127.0.0.1.

The manifest, its six bigWigs, the genome's chrom.sizes and the config TOML live in an Azure
container; the CLI runs as a subprocess, as a user runs it: `predictd run` with `--out` in the
Hadoop spelling HDInsight users copy from the portal, then `list`, `download` and `hub` on the
`az://` spelling of the same prefix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests

from predictd import storage

pytestmark = [pytest.mark.cloud, pytest.mark.slow]

CONTAINER = "predictd-azure-run"


def cli(*args, scratch, env=None, timeout=300):
    """`predictd ARGS` in a fresh interpreter, with this process's Azure environment."""
    env = {**os.environ, "PREDICTD_SCRATCH": str(scratch), **(env or {})}
    return subprocess.run([sys.executable, "-m", "predictd.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def azure(azurite_server):
    """Azurite with this module's container, predictd pointed at it."""
    from azure.storage.blob import BlobServiceClient

    with pytest.MonkeyPatch.context() as mp:
        azurite_server.use(mp, azurite_server.connection)
        BlobServiceClient.from_connection_string(azurite_server.connection).create_container(CONTAINER)
        yield azurite_server


@pytest.fixture(scope="module")
def inputs(azure, write_small_run_inputs, tmp_path_factory):
    """The small learnable run's inputs, uploaded: tracks named relative to the manifest."""
    local = write_small_run_inputs(tmp_path_factory.mktemp("inputs"))
    base = f"az://{CONTAINER}/inputs"
    for name in local.tracks:
        storage.upload_file(os.path.join(os.path.dirname(local.manifest), f"{name}.bw"),
                            f"{base}/{name}.bw")
    storage.upload_file(local.manifest, f"{base}/m.tsv")
    storage.upload_file(local.sizes, f"{base}/g.sizes")
    # the small run's settings, as a config file on Azure
    settings = dict(zip(local.args[1::2], local.args[0::2]))  # {"key=value": "--set"}
    storage.write_text_atomic(f"{base}/run.toml", "".join(f"{kv.split('=')[0]} = {kv.split('=')[1]}\n"
                                                          for kv in settings))
    return {"manifest": f"{base}/m.tsv", "genome": f"{base}/g.sizes", "config": f"{base}/run.toml",
            "tracks": local.tracks}


@pytest.fixture(scope="module")
def azure_run(azure, inputs, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("scratch")
    out = f"abfss://{CONTAINER}@{azure.account}.dfs.core.windows.net/run"
    p = cli("run", "--manifest", inputs["manifest"], "--genome", inputs["genome"],
            "--config", inputs["config"], "--out", out, "--holdout", "C:x", "--no-spark",
            scratch=scratch)
    assert p.returncode == 0, p.stderr[-3000:]
    return out, p, scratch


def test_run_writes_every_output_to_azure(azure_run, inputs):
    out, p, _ = azure_run
    names = {k for k, _ in storage.list_prefix(f"az://{CONTAINER}/run")}
    tracks = {f"tracks/{t}.imputed.bw" for t in inputs["tracks"]}
    assert tracks <= names, sorted(names)
    assert {"run.json", "tracks.json", "model/model.json", "report/index.html"} <= names
    run = json.loads(storage.read_text(f"{out}/run.json"))
    assert run["manifest"]["tracks"][0]["uri"].startswith(f"az://{CONTAINER}/inputs/")
    # nothing half-written: every track is a whole bigWig with its MD5 stored by the service
    from azure.storage.blob import BlobServiceClient

    container = BlobServiceClient.from_connection_string(
        os.environ["AZURE_STORAGE_CONNECTION_STRING"]).get_container_client(CONTAINER)
    for name in sorted(tracks):
        props = container.get_blob_client(f"run/{name}").get_blob_properties()
        assert props.content_settings.content_md5 is not None
        data = storage.read_bytes(f"az://{CONTAINER}/run/{name}")
        assert data[:4] == bytes.fromhex("26fc8f88") and len(data) == props.size  # bigWig magic


def test_no_secret_is_written_or_printed(azure_run, azure):
    out, p, _ = azure_run
    for text in (p.stdout, p.stderr):
        assert azure.key not in text and "AccountKey" not in text
    leaks = [k for k, _ in storage.list_prefix(out) if k.endswith((".json", ".tsv", ".html"))
             and azure.key in storage.read_text(f"{out}/{k}")]
    assert leaks == []


def test_list_download_and_hub_on_azure(azure_run, azure, tmp_path):
    _, _, scratch = azure_run
    out = f"az://{CONTAINER}/run"
    p = cli("list", out, scratch=scratch)
    assert p.returncode == 0, p.stderr
    assert sum(".imputed.bw" in ln for ln in p.stdout.splitlines()) == 6

    dest = tmp_path / "dl"
    p = cli("download", out, dest, "--assay", "x", scratch=scratch)
    assert p.returncode == 0, p.stderr
    got = sorted(os.listdir(dest / "tracks"))
    assert got == ["A.x.imputed.bw", "B.x.imputed.bw", "C.x.imputed.bw"]
    for name in got:
        assert (dest / "tracks" / name).read_bytes() == storage.read_bytes(f"{out}/tracks/{name}")
    p = cli("download", out, dest, "--assay", "x", scratch=scratch)
    assert p.returncode == 0 and "0 fetched" in p.stdout and "3 already complete" in p.stdout

    p = cli("hub", out, "--genome", "hg38", scratch=scratch)
    # the run's genome is a chrom.sizes file, so the hub needs --genome; Azurite refuses the
    # private container's hub to an anonymous request, as Azure does, and the hub says so
    hub_url = f"http://127.0.0.1:{azure.port}/{azure.account}/{CONTAINER}/run/hub.txt"
    assert p.returncode == 0, p.stderr
    assert f"the genome browser cannot read {hub_url} (HTTP 40" in p.stderr
    assert "the hub files are private" in p.stderr
    assert hub_url in p.stdout
    assert storage.exists(f"{out}/hub.txt")
    # --public opens the container: the hub and the tracks beside it are then checked readable
    p = cli("hub", out, "--genome", "hg38", "--public", scratch=scratch)
    assert p.returncode == 0, p.stderr
    assert "cannot read" not in p.stderr and "could not check" not in p.stderr
    track = requests.get(hub_url.replace("hub.txt", f"tracks/{got[0]}"),
                         headers={"Range": "bytes=0-3"}, timeout=10)
    assert track.status_code == 206 and track.content == b"\x26\xfc\x8f\x88"  # bigWig magic


def test_bad_azure_inputs_are_one_line(azure, inputs, tmp_path):
    scratch = tmp_path / "scratch"
    cases = {
        "container 'no-such-container' does not exist":
            ("list", "az://no-such-container/run"),
        f"Azure blob not found: az://{CONTAINER}/inputs/none.tsv":
            ("run", "--manifest", f"az://{CONTAINER}/inputs/none.tsv", "--genome", inputs["genome"],
             "--out", f"az://{CONTAINER}/bad", "--no-spark"),
        "Azure container 'no-such-container' does not exist":
            ("run", "--manifest", inputs["manifest"], "--genome", inputs["genome"],
             "--config", inputs["config"], "--out", "az://no-such-container/run", "--no-spark"),
    }
    for expected, args in cases.items():
        p = cli(*args, scratch=scratch)
        err = p.stderr.strip().splitlines()
        assert p.returncode != 0 and len(err) == 1 and expected in err[0], (args, p.stderr[-2000:])
    wrong = "A" * 20 + azure.key[20:]
    p = cli("list", f"az://{CONTAINER}/run", scratch=scratch,
            env={"AZURE_STORAGE_CONNECTION_STRING": azure.connection_string(azure.port, wrong)})
    err = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(err) == 1 and "credentials" in err[0], p.stderr[-2000:]
    assert wrong not in p.stderr


@pytest.mark.spark
def test_spark_run_on_azure_equals_the_in_process_run(azure_run, azure, inputs, tmp_path):
    """The same run on Spark local[2]: executors read the tensor blocks by ETag-pinned ranges
    and write the tracks themselves, and the tracks are the in-process run's, byte for byte."""
    out = f"az://{CONTAINER}/spark-run"
    p = cli("run", "--manifest", inputs["manifest"], "--genome", inputs["genome"],
            "--config", inputs["config"], "--out", out, "--holdout", "C:x", "--master", "local[2]",
            scratch=tmp_path / "scratch", env={"PREDICTD_DRIVER_MEMORY": "1g"})
    assert p.returncode == 0, p.stderr[-3000:]
    reference = azure_run[0]
    for track in inputs["tracks"]:
        name = f"tracks/{track}.imputed.bw"
        assert storage.read_bytes(f"{out}/{name}") == storage.read_bytes(f"{reference}/{name}"), name
