"""predictd.storage on Google Cloud Storage, against fake-gcs-server (a real GCS JSON API server)
on 127.0.0.1, and one `predictd run` with every input and output on gs://."""

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from predictd import storage
from predictd.errors import PredictdError

MiB = 1024 * 1024


def test_gcs_uris_are_parsed_and_joined():
    assert storage.parse_uri("gs://bkt/r1/run.json") == ("gs", "bkt/r1/run.json")
    assert storage.is_object_store("gs://bkt/r1") and storage.is_remote("GS://bkt/x")
    assert storage.join("gs://bkt/r1/", "tracks", "a.bw") == "gs://bkt/r1/tracks/a.bw"
    with pytest.raises(PredictdError, match="GCS URI has no bucket"):
        storage.parse_uri("gs:///x")


@pytest.mark.cloud
def test_gcs_write_read_list_delete_private_by_default(gcs_endpoint):
    b = gcs_endpoint
    storage.write_text_atomic(f"gs://{b}/run/run.json", json.dumps({"ok": 1}))
    storage.write_bytes_atomic(f"gs://{b}/run/report/index.html", b"<html/>", public=True)
    storage.write_bytes_atomic(f"gs://{b}/runner.txt", b"x")  # shares the prefix "run" textually
    assert json.loads(storage.read_text(f"gs://{b}/run/run.json")) == {"ok": 1}
    assert storage.exists(f"gs://{b}/run/run.json") and not storage.exists(f"gs://{b}/run/none.json")
    assert storage.exists(f"gs://{b}/run/") and not storage.exists(f"gs://{b}/nothing/")
    assert storage.list_prefix(f"gs://{b}/run") == [("report/index.html", 7), ("run.json", 9)]
    bucket = storage.gcs_client().bucket(b)
    public = bucket.blob("run/report/index.html")
    public.acl.reload()
    assert ("allUsers", "READER") in {(e["entity"], e["role"]) for e in public.acl}
    private = bucket.blob("run/run.json")
    private.acl.reload()
    assert "allUsers" not in {e["entity"] for e in private.acl}
    storage.make_public(f"gs://{b}/run/run.json")  # an existing object, as --public on resume
    private.acl.reload()
    assert ("allUsers", "READER") in {(e["entity"], e["role"]) for e in private.acl}
    storage.delete_prefix(f"gs://{b}/run")
    assert storage.list_prefix(f"gs://{b}/run") == []
    assert storage.read_bytes(f"gs://{b}/runner.txt") == b"x"
    with pytest.raises(PredictdError, match="refusing to delete a whole bucket"):
        storage.delete_prefix(f"gs://{b}/")


@pytest.mark.cloud
def test_gcs_missing_bucket_and_object(gcs_endpoint, tmp_path):
    b = gcs_endpoint
    for call in (storage.read_bytes, lambda u: storage.fetch_to_local(u, tmp_path),
                 storage.GcsRangeReader):
        with pytest.raises(PredictdError, match=f"^GCS object not found: gs://{b}/no/such.bw$"):
            call(f"gs://{b}/no/such.bw")
        with pytest.raises(PredictdError, match="^GCS bucket 'no-such-bucket' does not exist"):
            call("gs://no-such-bucket/x.bw")
    with pytest.raises(PredictdError, match="GCS bucket 'no-such-bucket' does not exist"):
        storage.write_bytes_atomic("gs://no-such-bucket/x.bw", b"x")
    with pytest.raises(PredictdError, match="names a bucket but no object"):
        storage.read_bytes(f"gs://{b}")


@pytest.mark.cloud
def test_gcs_large_upload_is_resumable_and_md5_checked(gcs_endpoint, tmp_path):
    b = gcs_endpoint
    big = tmp_path / "big.bw"
    data = os.urandom(20 * MiB + 123)
    big.write_bytes(data)
    storage.upload_file(big, f"gs://{b}/tracks/big.bw")
    blob = storage.gcs_client().bucket(b).get_blob("tracks/big.bw")
    assert blob.size == len(data)
    assert base64.b64decode(blob.md5_hash).hex() == hashlib.md5(data).hexdigest()
    assert storage.read_bytes(f"gs://{b}/tracks/big.bw") == data


@pytest.mark.cloud
@pytest.mark.slow
def test_gcs_killed_upload_leaves_no_object(gcs_endpoint, tmp_path):
    """A process killed (no cleanup) after sending a chunk of a resumable upload leaves no
    object, and an older object of that name unchanged."""
    b = gcs_endpoint
    storage.write_bytes_atomic(f"gs://{b}/tracks/old.bw", b"old content")
    big = tmp_path / "big.bw"
    big.write_bytes(os.urandom(20 * MiB))
    for name in ("big.bw", "old.bw"):
        script = textwrap.dedent(f"""
            import os
            from google.cloud.storage._media.requests import ResumableUpload
            from predictd import storage
            real, sent = ResumableUpload.transmit_next_chunk, []
            def send_then_die(self, *args, **kwargs):
                result = real(self, *args, **kwargs)
                sent.append(1)
                if len(sent) == 1:
                    os._exit(9)
                return result
            ResumableUpload.transmit_next_chunk = send_then_die
            storage.upload_file({str(big)!r}, "gs://{b}/tracks/{name}")
        """)
        p = subprocess.run([sys.executable, "-c", script],
                           env={**os.environ, "PYTHONPATH": os.getcwd()},
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 9, p.stderr[-2000:]
    assert not storage.exists(f"gs://{b}/tracks/big.bw")
    assert storage.read_bytes(f"gs://{b}/tracks/old.bw") == b"old content"


@pytest.mark.cloud
def test_gcs_fetch_md5_cache_and_resume(gcs_endpoint, tmp_path, monkeypatch):
    b = gcs_endpoint
    data = os.urandom(3 * MiB + 5)
    uri = f"gs://{b}/in/E017.H3K27me3.bw"
    storage.write_bytes_atomic(uri, data)
    md5 = hashlib.md5(data).hexdigest()
    with pytest.raises(PredictdError, match=f"md5 mismatch for {uri}: expected {'a' * 32}, got {md5}"):
        storage.fetch_to_local(uri, tmp_path / "s", md5="a" * 32)

    monkeypatch.setattr(storage, "PART_SIZE", MiB)  # four ranged GETs
    real_get = storage._gcs_get
    calls = []

    def flaky_get(uri_, start, end, generation):
        calls.append((start, end, generation))
        if len(calls) == 2:  # the second range: the connection drops
            import requests

            raise requests.exceptions.ConnectionError("connection reset (injected)")
        return real_get(uri_, start, end, generation)

    monkeypatch.setattr(storage, "_gcs_get", flaky_get)
    local = storage.fetch_to_local(uri, tmp_path / "s", md5=md5)
    assert Path(local).read_bytes() == data
    starts = [c[0] for c in calls]
    assert starts == [0, MiB, MiB, 2 * MiB, 3 * MiB]  # resumed at the range that failed
    assert len({c[2] for c in calls}) == 1 and calls[0][2] is not None  # one generation, pinned
    assert storage.fetch_to_local(uri, tmp_path / "s", md5=md5) == local
    assert len(calls) == 5  # cached


@pytest.mark.cloud
def test_gcs_range_reader_pins_the_generation(gcs_endpoint):
    b = gcs_endpoint
    data = bytes(range(256)) * 4096
    uri = f"gs://{b}/blob.bin"
    storage.write_bytes_atomic(uri, data)
    with storage.open_random_access(uri) as fh:
        assert isinstance(fh, storage.GcsRangeReader) and fh.size == len(data)
        fh.seek(1000)
        assert fh.read(10) == data[1000:1010]
        fh.seek(-5, 2)
        assert fh.read() == data[-5:]
        assert fh.requests == 2 and fh.fetched == 15
        storage.write_bytes_atomic(uri, b"new" + data)
        fh.seek(0)
        with pytest.raises(PredictdError, match="changed while it was being read"):
            fh.read(8)


@pytest.mark.cloud
@pytest.mark.slow
def test_run_list_and_download_on_gcs(gcs_endpoint, write_small_run_inputs, tmp_path):
    """`predictd run` with manifest, tracks, genome and --out on gs://, then list and download."""
    b = gcs_endpoint
    local = write_small_run_inputs(tmp_path / "inputs")
    for name in local.tracks:
        storage.upload_file(tmp_path / "inputs" / f"{name}.bw", f"gs://{b}/inputs/{name}.bw")
    storage.upload_file(local.manifest, f"gs://{b}/inputs/m.tsv")
    storage.upload_file(local.sizes, f"gs://{b}/inputs/g.sizes")
    env = {**os.environ, "PREDICTD_SCRATCH": str(tmp_path / "scratch")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "predictd.cli", *map(str, args)],
                              capture_output=True, text=True, env=env, timeout=300)

    out = f"gs://{b}/run"
    p = cli("run", "--manifest", f"gs://{b}/inputs/m.tsv", "--genome", f"gs://{b}/inputs/g.sizes",
            "--out", out, "--no-spark", *local.args)
    assert p.returncode == 0, p.stderr[-3000:]
    names = {k for k, _ in storage.list_prefix(out)}
    assert {f"tracks/{t}.imputed.bw" for t in local.tracks} | {"run.json", "tracks.json"} <= names
    p = cli("list", out)
    assert p.returncode == 0 and sum(".imputed.bw" in ln for ln in p.stdout.splitlines()) == 6
    p = cli("download", out, tmp_path / "dl", "--assay", "y")
    assert p.returncode == 0, p.stderr
    got = sorted(os.listdir(tmp_path / "dl" / "tracks"))
    assert got == ["A.y.imputed.bw", "B.y.imputed.bw", "C.y.imputed.bw"]
    for name in got:
        assert (tmp_path / "dl" / "tracks" / name).read_bytes() == \
            storage.read_bytes(f"{out}/tracks/{name}")
    p = cli("list", "gs://no-such-bucket/run")
    err = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(err) == 1 and "GCS bucket 'no-such-bucket' does not exist" in err[0]
