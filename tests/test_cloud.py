"""predictd on S3 and HTTP end to end, against real servers on 127.0.0.1.

moto's S3 server holds the manifest, five input bigWigs and the outputs; the stdlib HTTP server
serves the sixth input (with its md5 in the manifest and a pre-signed-URL-like query string that
must never be written anywhere). The CLI runs as a subprocess, as a user runs it: `predictd run`
on Spark local[2] with `--out s3://...`, then `predictd list/download/hub` on the result.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyBigWig
import pytest
import requests

from predictd import storage
from predictd.bigwig import BigWigWriter
from predictd.hub import check_hub, parse_ra

pytestmark = [pytest.mark.cloud, pytest.mark.slow]

BUCKET = "predictd-cloud"
N_BINS = 120_000
CELLS = ["E003", "E017", "E116"]
MARKS = ["H3K4me3", "H3K27me3"]
HTTP_TRACK = "E017.H3K4me3"
HOLDOUT = "E116:H3K4me3"
# Stands in for the signature of a pre-signed URL: a secret that may be used but never stored.
SIGNATURE = "5ec7e75161a7u7e0000deadbeef"
ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
SMALL = ["--set", "max_iterations=4", "--set", "block_bins=65536", "--set", "latent_factors=8"]


# --------------------------------------------------------------------------- servers
class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """The stdlib file server on 127.0.0.1 (query strings are ignored, as by S3 for a public
    object)."""
    root = tmp_path_factory.mktemp("www")
    srv = ThreadingHTTPServer(("127.0.0.1", 0),
                              functools.partial(_QuietHandler, directory=str(root)))
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    srv.root, srv.url = root, f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def s3(moto_endpoint, fake_aws):
    """moto with one bucket, for this module's tests (which share the run's outputs)."""
    with pytest.MonkeyPatch.context() as mp:
        fake_aws.reset_server(moto_endpoint)
        fake_aws.use(mp, moto_endpoint)
        storage.s3_client().create_bucket(Bucket=BUCKET)
        yield moto_endpoint


def cli(*args, scratch, timeout=300):
    """`predictd ARGS` in a fresh interpreter, with this process's (fake) AWS environment."""
    env = {**os.environ, "PREDICTD_DRIVER_MEMORY": "1g", "PREDICTD_SCRATCH": str(scratch)}
    return subprocess.run([sys.executable, "-m", "predictd.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def keys(prefix):
    return {k for k, _ in storage.list_prefix(f"s3://{BUCKET}/{prefix}")}


def grantees(key):
    acl = storage.s3_client().get_object_acl(Bucket=BUCKET, Key=key)
    return {(g["Grantee"].get("URI") or g["Grantee"].get("ID"), g["Permission"])
            for g in acl["Grants"]}


# --------------------------------------------------------------------------- inputs and the run
@pytest.fixture(scope="module")
def inputs(roadmap, s3, web, tmp_path_factory):
    """Six real bigWigs (3 cell types × 2 marks, 200 k bins of the shared Roadmap signal): five
    on S3, one over HTTP; the manifest on S3 with relative and absolute URIs."""
    d = tmp_path_factory.mktemp("inputs")
    length = N_BINS * 25
    sizes = d / "pilot.chrom.sizes"
    sizes.write_text(f"pilot\t{length}\n")
    rows = ["cell_type\tassay\turi\tmd5\n"]
    abs_rows = list(rows)
    http_url = f"{web.url}/{HTTP_TRACK}.bw?X-Amz-Credential=AKIAX&X-Amz-Signature={SIGNATURE}"
    for c in CELLS:
        for m in MARKS:
            name = f"{c}.{m}"
            path = d / f"{name}.bw"
            y = roadmap[name][:N_BINS].astype(np.float64)
            with BigWigWriter(str(path), [("pilot", length)]) as w:
                w.add_block("pilot", 0, np.sinh(y).astype(np.float32))
            if name == HTTP_TRACK:
                (web.root / path.name).write_bytes(path.read_bytes())
                md5 = hashlib.md5(path.read_bytes()).hexdigest()
                rows.append(f"{c}\t{m}\t{http_url}\t{md5}\n")
                abs_rows.append(rows[-1])
            else:
                storage.upload_file(path, f"s3://{BUCKET}/inputs/{path.name}")
                # E003 rows are relative: resolved against the manifest's s3:// directory
                uri = path.name if c == "E003" else f"s3://{BUCKET}/inputs/{path.name}"
                rows.append(f"{c}\t{m}\t{uri}\t\n")
                abs_rows.append(f"{c}\t{m}\ts3://{BUCKET}/inputs/{path.name}\t\n")
    manifest = d / "manifest.tsv"
    manifest.write_text("".join(rows))
    storage.upload_file(manifest, f"s3://{BUCKET}/inputs/manifest.tsv")
    return {"manifest": f"s3://{BUCKET}/inputs/manifest.tsv", "absolute_rows": abs_rows,
            "sizes": sizes, "dir": d, "http_url": http_url}


@pytest.fixture(scope="module")
def cloud_run(inputs, tmp_path_factory):
    """`predictd run` on Spark local[2]: manifest and inputs on S3 and HTTP, --out on S3."""
    scratch = tmp_path_factory.mktemp("scratch")
    out = f"s3://{BUCKET}/run"
    p = cli("run", "--manifest", inputs["manifest"], "--genome", inputs["sizes"], "--out", out,
            "--holdout", HOLDOUT, "--master", "local[2]", *SMALL, scratch=scratch)
    assert p.returncode == 0, p.stderr[-3000:]
    return out, p, scratch


@pytest.mark.spark
def test_run_writes_every_output_to_s3(cloud_run, inputs):
    out, p, _ = cloud_run
    found = keys("run")
    tracks = {f"tracks/{c}.{m}.imputed.bw" for c in CELLS for m in MARKS}
    expected = tracks | {"run.json", "model/model.json", "model/factors.npz",
                         "report/metrics.tsv", "report/index.html", "tensor/header.json"}
    assert expected <= found, sorted(expected - found)
    assert not [k for k in found if k.endswith((".tmp", ".part"))]
    # no upload was left pending: every multipart upload was completed or aborted
    assert not storage.s3_client().list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    run = json.loads(storage.read_text(f"{out}/run.json"))
    assert run["manifest"]["uri"] == inputs["manifest"]
    assert all(run["stages"][s] for s in ("ingest", "train", "impute", "evaluate"))
    metrics = storage.read_text(f"{out}/report/metrics.tsv").splitlines()
    assert metrics[0].split("\t")[:3] == ["cell_type", "assay", "method"] or "mse" in metrics[0]
    assert any(line.startswith("E116\tH3K4me3") for line in metrics[1:])
    # a track on S3 is a real bigWig over the whole pseudo-chromosome, in input units
    local = storage.fetch_to_local(f"{out}/tracks/E116.H3K4me3.imputed.bw",
                                   inputs["dir"] / "check")
    bw = pyBigWig.open(local)
    try:
        assert bw.chroms() == {"pilot": N_BINS * 25}
        vals = bw.values("pilot", 0, 100_000, numpy=True)
        assert np.isfinite(vals).all() and (vals >= 0).all() and vals.max() > 0
    finally:
        bw.close()


@pytest.mark.spark
def test_outputs_are_private_by_default(cloud_run, s3):
    for key in keys("run"):
        assert not any(g == ALL_USERS for g, _ in grantees(f"run/{key}")), key
    # and anonymous HTTP is refused, as AWS would
    r = requests.get(f"{s3}/{BUCKET}/run/tracks/E003.H3K4me3.imputed.bw", timeout=10)
    assert r.status_code == 403


@pytest.mark.spark
def test_no_secret_is_written_or_printed(cloud_run, fake_aws):
    out, p, _ = cloud_run
    secrets = (fake_aws.secret_key, SIGNATURE)
    for text in (p.stdout, p.stderr):
        assert not any(s in text for s in secrets)
    leaks = [key for key in sorted(keys("run")) if key.endswith((".json", ".tsv", ".html"))
             and any(s in storage.read_text(f"{out}/{key}") for s in secrets)]
    assert leaks == []
    run = json.loads(storage.read_text(f"{out}/run.json"))
    http = [t for t in run["manifest"]["tracks"] if t["name"] == HTTP_TRACK]
    assert http and http[0]["uri"].startswith("http://127.0.0.1:")  # still says where it was


@pytest.mark.spark
def test_list_and_download_with_filters_skip_and_resume(cloud_run, tmp_path):
    out, _, scratch = cloud_run
    p = cli("list", out, scratch=scratch)
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ".imputed.bw" in ln]
    assert len(lines) == 6 and "6 tracks" in p.stdout

    dest = tmp_path / "dl"
    p = cli("download", out, dest, "--assay", "H3K4me3", scratch=scratch)
    assert p.returncode == 0, p.stderr
    got = sorted(os.listdir(dest / "tracks"))
    assert got == [f"{c}.H3K4me3.imputed.bw" for c in CELLS]
    for name in got:
        remote = storage.read_bytes(f"{out}/tracks/{name}")
        assert (dest / "tracks" / name).read_bytes() == remote
    stamps = {n: os.stat(dest / "tracks" / n).st_mtime_ns for n in got}

    p = cli("download", out, dest, "--assay", "H3K4me3", scratch=scratch)
    assert p.returncode == 0 and "0 fetched" in p.stdout and "3 already complete" in p.stdout
    assert stamps == {n: os.stat(dest / "tracks" / n).st_mtime_ns for n in got}

    p = cli("download", out, dest, "--assay", "H3K9me3", scratch=scratch)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "--assay H3K9me3" in err[0] and "H3K27me3, H3K4me3" in err[0]

    p = cli("list", f"s3://{BUCKET}/nothing-here", scratch=scratch)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0
    assert f"s3://{BUCKET}/nothing-here" in p.stderr


class _CuttingProxy:
    """A TCP proxy in front of the S3 server that records request lines and Range headers and,
    when armed, drops the connection once a response has carried ``cut_after`` bytes."""

    def __init__(self, upstream: str):
        host, port = upstream.rsplit("//", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[str] = []
        self.cut_after: int | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False),
                             daemon=True).start()

    def _pump(self, src, dst, is_request):
        sent = 0
        try:
            while data := src.recv(65536):
                if is_request:
                    self.requests.extend(re.findall(rb"(?:GET|HEAD) [^ ]+|Range: bytes=\d+-",
                                                    data))
                elif self.cut_after is not None and sent + len(data) > self.cut_after:
                    dst.sendall(data[:self.cut_after - sent])
                    self.cut_after = None  # one cut only
                    raise ConnectionError
                sent += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self):
        self.sock.close()


@pytest.mark.spark
def test_interrupted_s3_download_resumes(cloud_run, s3, tmp_path, monkeypatch):
    """A download cut mid-transfer leaves a partial file; the next `predictd download` asks S3
    only for the missing bytes and ends with the exact object."""
    from predictd import download

    out, _, scratch = cloud_run
    proxy = _CuttingProxy(s3)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setattr(storage, "DOWNLOAD_ATTEMPTS", 1)
        monkeypatch.setattr(storage, "S3_MAX_ATTEMPTS", 1)
        dest = tmp_path / "dl"
        proxy.cut_after = 200_000
        with pytest.raises(Exception):
            download.download(out, str(dest), cell_types=["E003"], assays=["H3K27me3"])
        name = "E003.H3K27me3.imputed.bw"
        part = dest / "tracks" / f"{name}.part"
        assert part.exists() and 0 < part.stat().st_size < 200_000
        assert not (dest / "tracks" / name).exists()
        have = part.stat().st_size
        proxy.requests.clear()
        p = cli("download", out, dest, "-c", "E003", "-a", "H3K27me3", scratch=scratch)
        assert p.returncode == 0, p.stderr
        assert f"Range: bytes={have}-".encode() in proxy.requests
        data = (dest / "tracks" / name).read_bytes()
        assert data == storage.read_bytes(f"{out}/tracks/{name}")
        assert sorted(os.listdir(dest / "tracks")) == [name]  # no .part, .lock left behind
    finally:
        proxy.close()


def test_public_run_hub_and_http_download(inputs, s3, tmp_path_factory):
    """--public makes tracks readable by anyone; `predictd hub --public` publishes the run so
    the genome browser (and `predictd list/download` over plain HTTP) can read it."""
    scratch = tmp_path_factory.mktemp("scratch-pub")
    out = f"s3://{BUCKET}/pub"
    p = cli("run", "--manifest", inputs["manifest"], "--genome", inputs["sizes"], "--out", out,
            "--no-spark", "--public", *SMALL, scratch=scratch)
    assert p.returncode == 0, p.stderr[-3000:]
    for c in CELLS:
        for m in MARKS:
            assert (ALL_USERS, "READ") in grantees(f"pub/tracks/{c}.{m}.imputed.bw")
    for private in ("pub/run.json", "pub/model/model.json", "pub/tensor/header.json"):
        assert not any(g == ALL_USERS for g, _ in grantees(private)), private

    p = cli("hub", out, "--genome", "hg19", "--public", scratch=scratch)
    assert p.returncode == 0, p.stderr
    assert f"{s3}/{BUCKET}/pub/hub.txt" in p.stdout  # the URL to paste, S3-compatible endpoint
    base = f"{s3}/{BUCKET}/pub"
    files = {n: requests.get(f"{base}/{n}", timeout=10).text
             for n in ("hub.txt", "genomes.txt", "trackDb.txt")}
    check_hub(files)
    urls = [st["bigDataUrl"] for st in parse_ra(files["trackDb.txt"]) if "bigDataUrl" in st]
    assert len(urls) == 6
    for u in urls:  # relative to the hub, and readable anonymously as the browser reads them
        r = requests.get(f"{base}/{u}", headers={"Range": "bytes=0-3"}, timeout=10)
        assert r.status_code == 206 and r.content == b"\x26\xfc\x8f\x88"  # bigWig magic

    http_dest = tmp_path_factory.mktemp("http-dl")
    p = cli("list", base, scratch=scratch)
    assert p.returncode == 0 and "6 tracks" in p.stdout, p.stderr
    p = cli("download", base, http_dest, "--cell-type", "E0*", "--assay", "H3K27me3",
            scratch=scratch)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(http_dest / "tracks")) == ["E003.H3K27me3.imputed.bw",
                                                         "E017.H3K27me3.imputed.bw"]
    assert (http_dest / "tracks" / "E017.H3K27me3.imputed.bw").read_bytes() == \
        storage.read_bytes(f"{out}/tracks/E017.H3K27me3.imputed.bw")


def test_public_on_a_finished_private_run_publishes_what_it_wrote(inputs, s3, tmp_path):
    """--public added when a private run is resumed (or re-run) makes the tracks and report
    it had already written public too, not only those it writes now."""
    out = f"s3://{BUCKET}/late"
    args = ("run", "--manifest", inputs["manifest"], "--genome", inputs["sizes"], "--out", out,
            "--no-spark", "--holdout", "E116:H3K4me3", *SMALL)
    p = cli(*args, scratch=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    track = f"late/tracks/{CELLS[0]}.{MARKS[0]}.imputed.bw"
    assert not any(g == ALL_USERS for g, _ in grantees(track))
    p = cli(*args, "--public", scratch=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "impute    skipped" in p.stdout or "impute    skipped" in p.stderr
    for c in CELLS:
        for m in MARKS:
            assert (ALL_USERS, "READ") in grantees(f"late/tracks/{c}.{m}.imputed.bw")
    for key in ("late/report/index.html", "late/report/metrics.tsv", "late/tracks.json"):
        assert (ALL_USERS, "READ") in grantees(key), key
    for private in ("late/run.json", "late/model/model.json", "late/tensor/header.json"):
        assert not any(g == ALL_USERS for g, _ in grantees(private)), private


def test_wrong_md5_of_http_input_is_one_clear_line(inputs, fake_aws, tmp_path):
    good = hashlib.md5((inputs["dir"] / f"{HTTP_TRACK}.bw").read_bytes()).hexdigest()
    bad = tmp_path / "manifest.tsv"
    bad.write_text("".join(inputs["absolute_rows"]).replace(good, "0" * 32))
    p = cli("ingest", "--manifest", bad, "--genome", inputs["sizes"], "--out", tmp_path / "out",
            "--no-spark", scratch=tmp_path / "scratch")
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "md5 mismatch" in lines[0] and f"{HTTP_TRACK}.bw" in lines[0]
    assert "0" * 32 in lines[0] and good in lines[0]
    assert SIGNATURE not in p.stderr and fake_aws.access_key not in p.stderr
