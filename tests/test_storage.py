"""Tests for predictd.storage against real servers on 127.0.0.1: moto (S3) and http.server."""

import hashlib
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from predictd import storage
from predictd.errors import PredictdError

MiB = 1024 * 1024


# --- a small HTTP server with byte ranges, ETags and injectable connection drops ------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range"), self.headers.get("If-Range")))
        path = Path(srv.root) / self.path.lstrip("/").split("?")[0]
        if not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        st = path.stat()
        etag = f'"{st.st_size}-{st.st_mtime_ns}"'
        start, status = 0, 200
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and srv.honour_ranges and (if_range is None or if_range == etag):
            first, _, last = rng.removeprefix("bytes=").partition("-")
            start = int(first)
            end = int(last) + 1 if last else len(data)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
            data = data[start:end]
        self.send_response(status)
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(data)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{st.st_size}")
        self.end_headers()
        cut = srv.cut_after.get(self.path)
        if cut is not None and cut < len(data):
            del srv.cut_after[self.path]  # drop one connection only
            # promise the whole body, send part of it, then drop the connection
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(data)


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.root, srv.log, srv.cut_after, srv.honour_ranges = str(root), [], {}, True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def body_requests(srv, path):
    """GETs of ``path`` that asked for more than the one-byte probe."""
    return [(p, r) for p, r, _ in srv.log if p == path and r != "bytes=0-0"]


# --- URIs ------------------------------------------------------------------------------------


def test_parse_uri_and_join():
    assert storage.parse_uri("a/b.bw") == ("file", "a/b.bw")
    assert storage.parse_uri(Path("/x/y")) == ("file", "/x/y")
    assert storage.parse_uri("file://localhost/tmp/x%20y") == ("file", "/tmp/x y")
    assert storage.parse_uri("s3://bkt/k/e/y") == ("s3", "bkt/k/e/y")
    assert storage.parse_uri("Https://h:1/p?q=1") == ("https", "h:1/p?q=1")
    assert storage.parse_uri("~/x")[1] == os.path.expanduser("~/x")
    for bad, msg in [("ftp://b/k", "unsupported URI scheme 'ftp'"), ("s3:///k", "no bucket"),
                     ("file://otherhost/x", "another host"), ("http:///x", "no host"), ("", "not a path")]:
        with pytest.raises(PredictdError, match=msg):
            storage.parse_uri(bad)
    assert storage.is_remote("s3://b/k") and storage.is_remote("http://h/x")
    assert not storage.is_remote("/tmp/x") and not storage.is_remote("file:///tmp/x")
    assert storage.join("s3://b/out/", "tracks", "/a.bw") == "s3://b/out/tracks/a.bw"
    assert storage.join("s3://b", "k") == "s3://b/k"
    assert storage.join("/out", "model", "f.npz") == "/out/model/f.npz"
    assert storage.join("file:///out", "x") == "file:///out/x"


def test_messages_mask_url_secrets(http_server):
    url = f"http://user:hunter2@127.0.0.1:{http_server.server_address[1]}/nope.bw?X-Amz-Signature=abc123&a=1"
    with pytest.raises(PredictdError) as err:
        storage.read_bytes(url)
    msg = str(err.value)
    assert "not found (HTTP 404)" in msg and "nope.bw" in msg and "a=1" in msg
    assert "hunter2" not in msg and "abc123" not in msg


# --- local files -----------------------------------------------------------------------------


def test_local_atomic_write_read_list_delete(tmp_path):
    out = tmp_path / "out"
    storage.write_text_atomic(str(out / "run.json"), '{"a": 1}')
    storage.write_bytes_atomic(f"file://{out}/model/f.bin", b"\x00\x01")
    assert storage.read_text(out / "run.json") == '{"a": 1}'
    assert storage.read_bytes(out / "model" / "f.bin") == b"\x00\x01"
    assert storage.exists(out / "run.json") and not storage.exists(out / "nope")
    assert storage.list_prefix(out) == [("model/f.bin", 2), ("run.json", 8)]
    assert storage.list_prefix(tmp_path / "missing") == []
    storage.delete_prefix(out)
    assert not out.exists()
    storage.delete_prefix(out)  # deleting nothing is fine
    with pytest.raises(PredictdError, match="refusing"):
        storage.delete_prefix("/")


def test_local_atomic_writes_get_the_umask_permissions(tmp_path):
    """Outputs are written through private temporary files, then renamed: they must end up
    with the permissions of any file the user creates (a web server serving a hub reads them
    as another user)."""
    for umask in (0o022, 0o077):
        old = os.umask(umask)
        try:
            storage._UMASK = None  # read again: it is cached per process
            storage.write_text_atomic(str(tmp_path / f"a{umask:o}.json"), "{}")
        finally:
            os.umask(old)
            storage._UMASK = None
        assert (tmp_path / f"a{umask:o}.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_local_failed_write_keeps_old_content(tmp_path):
    target = tmp_path / "run.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        storage.write_bytes_atomic(target, 12345)  # fails inside the write
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["run.json"]


def test_local_errors_name_the_path(tmp_path):
    with pytest.raises(PredictdError, match=f"file not found: {tmp_path}/nope.tsv"):
        storage.read_text(tmp_path / "nope.tsv")
    with pytest.raises(PredictdError, match=f"is a directory, not a file: {tmp_path}"):
        storage.read_bytes(tmp_path)
    with pytest.raises(PredictdError, match="file not found: .*gone.bw"):
        storage.fetch_to_local(str(tmp_path / "gone.bw"), tmp_path)
    with pytest.raises(PredictdError, match="is a directory"):
        storage.fetch_to_local(f"file://{tmp_path}", tmp_path)
    (tmp_path / "bin.dat").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PredictdError, match="not utf-8 text: .*bin.dat"):
        storage.read_text(tmp_path / "bin.dat")
    with pytest.raises(PredictdError, match="cannot write to an http URL"):
        storage.write_text_atomic("http://127.0.0.1:9/x", "x")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_local_unwritable_destinations(tmp_path):
    # /proc refuses new files even for root, so this runs in CI too
    with pytest.raises(PredictdError, match="cannot write /proc/predictd-test.json"):
        storage.write_text_atomic("/proc/predictd-test.json", "{}")
    src = tmp_path / "a.bw"
    src.write_bytes(b"x")
    with pytest.raises(PredictdError, match="cannot write /proc/predictd-test.bw"):
        storage.upload_file(src, "/proc/predictd-test.bw")
    with pytest.raises(PredictdError, match=f"{src}/sub.json"):
        storage.write_text_atomic(src / "sub.json", "{}")  # parent is a file


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file modes")
def test_local_permission_denied(tmp_path):
    locked = tmp_path / "locked.bw"
    locked.write_bytes(b"x")
    locked.chmod(0)
    with pytest.raises(PredictdError, match="permission denied reading .*locked.bw"):
        storage.fetch_to_local(str(locked), tmp_path)
    with pytest.raises(PredictdError, match="permission denied reading .*locked.bw"):
        storage.read_bytes(locked)


def test_fetch_local_is_returned_as_is_and_md5_checked(tmp_path):
    path = tmp_path / "t.bw"
    path.write_bytes(b"signal")
    good = hashlib.md5(b"signal").hexdigest()
    assert storage.fetch_to_local(str(path), tmp_path / "scratch", md5=good.upper()) == str(path)
    assert not (tmp_path / "scratch").exists()
    with pytest.raises(PredictdError, match=f"md5 mismatch for {path}: expected 0+, got {good}"):
        storage.fetch_to_local(str(path), tmp_path, md5="0" * 32)
    copy = storage.download_file(str(path), tmp_path / "copy" / "t.bw")
    assert Path(copy).read_bytes() == b"signal"
    storage.upload_file(path, f"file://{tmp_path}/up/t.bw")
    assert (tmp_path / "up" / "t.bw").read_bytes() == b"signal"


# --- HTTP ------------------------------------------------------------------------------------


def test_http_fetch_cache_and_md5(http_server, tmp_path):
    data = os.urandom(3 * MiB + 17)
    (Path(http_server.root) / "E003.bw").write_bytes(data)
    url = f"{http_server.url}/E003.bw"
    md5 = hashlib.md5(data).hexdigest()
    scratch = tmp_path / "scratch"
    local = storage.fetch_to_local(url, scratch, md5=md5)
    assert Path(local).read_bytes() == data
    assert Path(local).parent == scratch and local.endswith("-E003.bw")
    assert sorted(os.listdir(scratch)) == [os.path.basename(local), os.path.basename(local) + ".lock"]
    assert len(body_requests(http_server, "/E003.bw")) == 1
    # cached: with md5, and without md5 (size check), nothing is downloaded again
    assert storage.fetch_to_local(url, scratch, md5=md5) == local
    assert storage.fetch_to_local(url, scratch) == local
    assert len(body_requests(http_server, "/E003.bw")) == 1
    # same basename under another URL gets its own cache file
    (Path(http_server.root) / "other").mkdir()
    (Path(http_server.root) / "other" / "E003.bw").write_bytes(b"different")
    other = storage.fetch_to_local(f"{http_server.url}/other/E003.bw", scratch)
    assert other != local and Path(other).read_bytes() == b"different"
    assert storage.exists(url) and not storage.exists(f"{http_server.url}/none.bw")
    assert storage.read_bytes(f"{http_server.url}/other/E003.bw") == b"different"


def test_http_md5_mismatch(http_server, tmp_path):
    (Path(http_server.root) / "a.bw").write_bytes(b"abc")
    url = f"{http_server.url}/a.bw"
    actual = hashlib.md5(b"abc").hexdigest()
    with pytest.raises(PredictdError) as err:
        storage.fetch_to_local(url, tmp_path, md5="f" * 32)
    assert str(err.value) == f"md5 mismatch for {url}: expected {'f' * 32}, got {actual}"
    assert not [n for n in os.listdir(tmp_path) if n.endswith((".bw", ".part"))]


def test_http_missing_and_unreachable(http_server, tmp_path):
    with pytest.raises(PredictdError, match=r"not found \(HTTP 404\): http://127\.0\.0\.1:\d+/missing\.bw"):
        storage.fetch_to_local(f"{http_server.url}/missing.bw", tmp_path)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PredictdError, match=f"cannot connect .*127.0.0.1:{port}/x.bw"):
        storage.download_file(f"http://127.0.0.1:{port}/x.bw", tmp_path / "x.bw")


def test_http_dropped_connection_resumes_with_range(http_server, tmp_path):
    data = os.urandom(5 * MiB)
    (Path(http_server.root) / "big.bw").write_bytes(data)
    http_server.cut_after["/big.bw"] = 2 * MiB + 5
    out = storage.download_file(f"{http_server.url}/big.bw", tmp_path / "big.bw")
    assert Path(out).read_bytes() == data
    ranges = [r for _, r in body_requests(http_server, "/big.bw")]
    assert ranges[0] is None and len(ranges) == 2
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 2 * MiB + 5  # resumed, not restarted
    assert not (tmp_path / "big.bw.part").exists()


def test_http_partial_from_earlier_run_is_resumed(http_server, tmp_path, monkeypatch):
    data = os.urandom(4 * MiB)
    (Path(http_server.root) / "t.bw").write_bytes(data)
    url = f"{http_server.url}/t.bw"
    monkeypatch.setattr(storage, "DOWNLOAD_ATTEMPTS", 1)
    http_server.cut_after["/t.bw"] = 3 * MiB
    with pytest.raises(PredictdError, match="kept failing"):
        storage.download_file(url, tmp_path / "t.bw")
    part = tmp_path / "t.bw.part"
    assert 0 < part.stat().st_size <= 3 * MiB and not (tmp_path / "t.bw").exists()
    have = part.stat().st_size
    storage.download_file(url, tmp_path / "t.bw", progress=True)
    assert (tmp_path / "t.bw").read_bytes() == data
    assert body_requests(http_server, "/t.bw")[-1] == ("/t.bw", f"bytes={have}-")
    assert http_server.log[-1][2] is not None  # If-Range sent with the resumed request


def test_http_partial_of_changed_file_is_discarded(http_server, tmp_path, monkeypatch):
    src = Path(http_server.root) / "t.bw"
    src.write_bytes(b"A" * (2 * MiB))
    url = f"{http_server.url}/t.bw"
    monkeypatch.setattr(storage, "DOWNLOAD_ATTEMPTS", 1)
    http_server.cut_after["/t.bw"] = MiB
    with pytest.raises(PredictdError):
        storage.download_file(url, tmp_path / "t.bw")
    new = b"B" * (2 * MiB)
    src.write_bytes(new)
    os.utime(src, ns=(1, 1))  # new ETag even if the write landed in the same mtime tick
    storage.download_file(url, tmp_path / "t.bw")
    assert (tmp_path / "t.bw").read_bytes() == new


def test_http_server_ignoring_ranges(http_server, tmp_path, monkeypatch):
    data = os.urandom(3 * MiB)
    (Path(http_server.root) / "t.bw").write_bytes(data)
    http_server.honour_ranges = False
    http_server.cut_after["/t.bw"] = MiB + 3
    out = storage.download_file(f"{http_server.url}/t.bw", tmp_path / "t.bw")
    assert Path(out).read_bytes() == data  # restarted from 0 instead of appending twice


def test_download_skips_complete_and_replaces_stale(http_server, tmp_path):
    (Path(http_server.root) / "t.bw").write_bytes(b"new content")
    target = tmp_path / "t.bw"
    target.write_bytes(b"old")  # wrong size: replaced
    storage.download_file(f"{http_server.url}/t.bw", target)
    assert target.read_bytes() == b"new content"
    n = len(body_requests(http_server, "/t.bw"))
    storage.download_file(f"{http_server.url}/t.bw", target)
    assert len(body_requests(http_server, "/t.bw")) == n


# --- S3 (moto server on 127.0.0.1) ------------------------------------------------------------


@pytest.fixture
def bucket(s3_endpoint):
    storage.s3_client().create_bucket(Bucket="predictd-test")
    return "predictd-test"


def _grantees(bucket, key):
    acl = storage.s3_client().get_object_acl(Bucket=bucket, Key=key)
    return {(g["Grantee"].get("URI") or g["Grantee"].get("ID"), g["Permission"]) for g in acl["Grants"]}


ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"


@pytest.mark.cloud
def test_s3_client_uses_endpoint_from_environment(s3_endpoint):
    assert storage.s3_client().meta.endpoint_url == s3_endpoint


@pytest.mark.cloud
def test_s3_write_read_list_delete_private_by_default(bucket):
    storage.write_text_atomic(f"s3://{bucket}/run/run.json", json.dumps({"ok": 1}))
    storage.write_bytes_atomic(f"s3://{bucket}/run/report/index.html", b"<html/>", public=True)
    storage.write_bytes_atomic(f"s3://{bucket}/runner.txt", b"x")  # shares the prefix "run" textually
    assert json.loads(storage.read_text(f"s3://{bucket}/run/run.json")) == {"ok": 1}
    assert storage.exists(f"s3://{bucket}/run/run.json")
    assert not storage.exists(f"s3://{bucket}/run/none.json")
    assert storage.exists(f"s3://{bucket}/run/") and not storage.exists(f"s3://{bucket}/nothing/")
    assert storage.list_prefix(f"s3://{bucket}/run") == [("report/index.html", 7), ("run.json", 9)]
    assert not any(g == ALL_USERS for g, _ in _grantees(bucket, "run/run.json"))
    assert (ALL_USERS, "READ") in _grantees(bucket, "run/report/index.html")
    storage.delete_prefix(f"s3://{bucket}/run")
    assert storage.list_prefix(f"s3://{bucket}/run") == []
    assert storage.read_bytes(f"s3://{bucket}/runner.txt") == b"x"
    with pytest.raises(PredictdError, match="refusing to delete a whole bucket"):
        storage.delete_prefix(f"s3://{bucket}/")


@pytest.mark.cloud
def test_s3_missing_object_and_bucket(bucket, tmp_path):
    with pytest.raises(PredictdError, match=f"S3 object not found: s3://{bucket}/no/such.bw"):
        storage.read_bytes(f"s3://{bucket}/no/such.bw")
    with pytest.raises(PredictdError, match=f"S3 object not found: s3://{bucket}/no/such.bw"):
        storage.fetch_to_local(f"s3://{bucket}/no/such.bw", tmp_path)
    with pytest.raises(PredictdError, match="S3 bucket 'no-such-bucket' does not exist"):
        storage.read_bytes("s3://no-such-bucket/x.bw")
    with pytest.raises(PredictdError, match="S3 bucket 'no-such-bucket' does not exist"):
        storage.fetch_to_local("s3://no-such-bucket/x.bw", tmp_path)
    with pytest.raises(PredictdError, match="names a bucket but no object key"):
        storage.read_bytes(f"s3://{bucket}")


@pytest.mark.cloud
def test_s3_unreachable_endpoint_names_uri_without_secrets(bucket, fake_aws, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(storage, "HTTP_TIMEOUT", (2, 2))
    monkeypatch.setattr(storage, "S3_MAX_ATTEMPTS", 1)
    with pytest.raises(PredictdError) as err:
        storage.write_text_atomic(f"s3://{bucket}/x.txt", "x")
    msg = str(err.value)
    assert "cannot connect to the S3 endpoint" in msg and f"s3://{bucket}/x.txt" in msg
    assert fake_aws.secret_key not in msg and "AKIA" not in msg


@pytest.mark.cloud
def test_s3_upload_small_and_multipart(bucket, tmp_path):
    small = tmp_path / "small.bw"
    small.write_bytes(b"tiny track")
    storage.upload_file(small, f"s3://{bucket}/tracks/small.bw")
    assert storage.read_bytes(f"s3://{bucket}/tracks/small.bw") == b"tiny track"

    assert not any(g == ALL_USERS for g, _ in _grantees(bucket, "tracks/small.bw"))

    big = tmp_path / "big.bw"
    data = os.urandom(20 * MiB + 123)
    big.write_bytes(data)
    client = storage.s3_client()
    created = []
    record = lambda params, **kw: created.append(dict(params))  # noqa: E731
    client.meta.events.register("before-parameter-build.s3.CreateMultipartUpload", record)
    try:
        storage.upload_file(big, f"s3://{bucket}/tracks/big.bw")
        storage.upload_file(big, f"s3://{bucket}/tracks/public.bw", public=True)
    finally:
        client.meta.events.unregister("before-parameter-build.s3.CreateMultipartUpload", record)
    head = client.head_object(Bucket=bucket, Key="tracks/big.bw")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # really multipart: 3 parts of 8 MiB
    assert storage.read_bytes(f"s3://{bucket}/tracks/big.bw") == data
    # Private = no ACL sent (S3's default is owner-only). moto crashes on get_object_acl for
    # multipart objects created without an ACL, so check the request instead of the ACL here.
    assert "ACL" not in created[0] and created[1]["ACL"] == "public-read"
    assert (ALL_USERS, "READ") in _grantees(bucket, "tracks/public.bw")


@pytest.mark.cloud
def test_s3_interrupted_multipart_leaves_nothing(bucket, tmp_path):
    big = tmp_path / "big.bw"
    big.write_bytes(os.urandom(20 * MiB))
    client = storage.s3_client()
    calls = []

    def fail_part_two(params, **kwargs):  # params are the API call's arguments
        calls.append(params["PartNumber"])
        if params["PartNumber"] == 2:
            raise ConnectionResetError("injected failure in part 2")

    client.meta.events.register("before-parameter-build.s3.UploadPart", fail_part_two)
    try:
        with pytest.raises(ConnectionResetError, match="part 2"):
            storage.upload_file(big, f"s3://{bucket}/tracks/big.bw")
    finally:
        client.meta.events.unregister("before-parameter-build.s3.UploadPart", fail_part_two)
    assert 2 in calls
    assert not storage.exists(f"s3://{bucket}/tracks/big.bw")
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.cloud
def test_s3_fetch_md5_cache_and_resume(bucket, tmp_path, monkeypatch):
    data = os.urandom(3 * MiB + 5)
    uri = f"s3://{bucket}/in/E017.H3K27me3.bw"
    storage.write_bytes_atomic(uri, data)
    md5 = hashlib.md5(data).hexdigest()
    with pytest.raises(PredictdError, match=f"md5 mismatch for {uri}: expected {'a' * 32}, got {md5}"):
        storage.fetch_to_local(uri, tmp_path / "s", md5="a" * 32)

    # drop the stream after the first chunk: the download resumes with a byte range
    real_append = storage._append_stream
    dropped = []

    def flaky_append(chunks, part, bar):
        if not dropped:
            dropped.append(True)

            def first_then_fail():
                yield next(iter(chunks))
                from urllib3.exceptions import ProtocolError

                raise ProtocolError("connection broken (injected)")

            return real_append(first_then_fail(), part, bar)
        return real_append(chunks, part, bar)

    ranges = []
    client = storage.s3_client()
    record = lambda params, **kw: ranges.append(params.get("Range"))  # noqa: E731
    client.meta.events.register("before-parameter-build.s3.GetObject", record)
    monkeypatch.setattr(storage, "_append_stream", flaky_append)
    try:
        local = storage.fetch_to_local(uri, tmp_path / "s", md5=md5)
    finally:
        client.meta.events.unregister("before-parameter-build.s3.GetObject", record)
    assert Path(local).read_bytes() == data
    assert ranges[0] is None and ranges[1] == f"bytes={storage._CHUNK}-"
    assert storage.fetch_to_local(uri, tmp_path / "s", md5=md5) == local
    assert len(ranges) == 2  # cached


@pytest.mark.cloud
def test_abort_pending_uploads_cleans_a_killed_writers_leftovers(bucket):
    """A writer killed mid multipart upload leaves an invisible, billed upload; resume aborts
    the ones under the run's prefix and leaves other prefixes alone."""
    client = storage.s3_client()
    for key in ("run/tracks/A.x.imputed.bw", "run/model/factors.npz", "other/x.bw"):
        up = client.create_multipart_upload(Bucket=bucket, Key=key)
        client.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=1,
                           Body=b"partial")
    assert storage.abort_pending_uploads(f"s3://{bucket}/run") == 2
    left = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in left] == ["other/x.bw"]
    assert storage.list_prefix(f"s3://{bucket}/run") == []  # nothing half-written appeared
    assert storage.abort_pending_uploads("/tmp/not-s3") == 0


@pytest.mark.cloud
def test_s3_range_reader_reads_only_what_is_asked_and_pins_the_version(bucket):
    data = bytes(range(256)) * 4096  # 1 MiB
    uri = f"s3://{bucket}/blob.bin"
    storage.write_bytes_atomic(uri, data)
    with storage.S3RangeReader(uri) as fh:
        assert fh.size == len(data) and fh.seekable()
        fh.seek(1000)
        assert fh.read(10) == data[1000:1010] and fh.tell() == 1010
        fh.seek(-5, 2)
        assert fh.read() == data[-5:] and fh.read(3) == b""
        fh.seek(10, 1)  # past the end: nothing to read
        assert fh.read(4) == b""
        assert fh.requests == 2 and fh.fetched == 15
        with pytest.raises(ValueError, match="negative"):
            fh.seek(-1)
        # replaced while open: the next range is refused, not read from the new version
        storage.write_bytes_atomic(uri, b"new" + data)
        fh.seek(0)
        with pytest.raises(PredictdError, match="changed while it was being read"):
            fh.read(8)
    with pytest.raises(PredictdError, match="S3 object not found"):
        storage.S3RangeReader(f"s3://{bucket}/none.bin")


def test_a_tensor_block_without_data_is_a_few_kilobytes(tmp_path):
    """A chromosome no track covers is stored as blocks of nulls: their bin counters are
    delta-encoded, so such a block costs kilobytes (plain int64 counters took 2 MB); every
    value reads back."""
    import numpy as np

    from predictd import tensor

    n, names = 262_144, ["A.x", "B.x", "A.y"]
    X = np.full((n, len(names)), np.nan, np.float32)
    data = tensor.encode_block(5_000_000, X, names, 25)
    assert len(data) < 32_000
    tensor.write_block(str(tmp_path), "chrQ", 3, 5_000_000, X, names, 25)
    bins, Y = tensor.read_block(str(tmp_path), "chrQ", 3, names)
    assert np.array_equal(bins, np.arange(5_000_000, 5_000_000 + n)) and np.isnan(Y).all()
    import pyarrow.parquet as pq
    starts = pq.read_table(tensor.block_uri(str(tmp_path), "chrQ", 3), columns=["start"])
    assert np.array_equal(starts.column("start").to_numpy(), bins * 25)


@pytest.mark.cloud
def test_tensor_block_on_s3_is_read_by_column_ranges(bucket, monkeypatch):
    import numpy as np

    from predictd import tensor

    rng = np.random.default_rng(0)
    names = [f"c{i}.a{j}" for i in range(20) for j in range(10)]
    X = rng.random((20_000, len(names))).astype(np.float32)
    X[rng.random(X.shape) < 0.01] = np.nan
    root = f"s3://{bucket}/tensor"
    tensor.write_block(root, "chr1", 0, 0, X, names, 25)
    size = storage.s3_client().head_object(
        Bucket=bucket, Key="tensor/chrom=chr1/block=000000.parquet")["ContentLength"]
    readers = []
    real = storage.S3RangeReader

    class Spy(real):
        def __init__(self, uri):
            super().__init__(uri)
            readers.append(self)

    monkeypatch.setattr(storage, "S3RangeReader", Spy)
    want = [names[5], names[77], names[150]]
    bins, got = tensor.read_block(root, "chr1", 0, want)
    np.testing.assert_array_equal(got, X[:, [5, 77, 150]])
    np.testing.assert_array_equal(bins, np.arange(20_000))
    # 3 of 200 columns: a small part of the object crossed the wire
    assert readers[0].fetched < size / 10, (readers[0].fetched, size)
    _, whole = tensor.read_block(root, "chr1", 0, names)
    np.testing.assert_array_equal(whole, X)
    with pytest.raises(PredictdError, match="S3 object not found"):
        tensor.read_block(root, "chr1", 1, want)


# --------------------------------------------------------------------------- S3 credentials

@pytest.fixture(scope="module")
def checking_s3():
    """A moto server of its own that checks signatures as AWS does (one user, one bucket)."""
    from tests.support.s3server import start_authenticating_moto_server
    endpoint, user, stop = start_authenticating_moto_server("predictd-auth")
    yield endpoint, user
    stop()


def _as(monkeypatch, endpoint, fake_aws, key, secret):
    fake_aws.use(monkeypatch, endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)


@pytest.mark.cloud
def test_s3_rejected_credentials_are_told_from_a_denied_policy(checking_s3, fake_aws,
                                                                 monkeypatch):
    """A HEAD's 403 has no body: an unknown key, a wrong secret and a policy that denies all
    read "Forbidden". The message says which (from the same question asked with a GET), and
    never shows the secret."""
    endpoint, user = checking_s3
    uri = "s3://predictd-auth/run/_predictd/identity.json"
    _as(monkeypatch, endpoint, fake_aws, user["key"], user["secret"])
    storage.write_text_atomic(uri, "{}")            # the server accepts the user's own key
    assert storage.exists(uri) and storage.read_text(uri) == "{}"
    with pytest.raises(PredictdError, match=r"^access denied reading s3://other-bucket/x"):
        storage.exists("s3://other-bucket/x")       # the policy allows one bucket only
    _as(monkeypatch, endpoint, fake_aws, "AKIAPREDICTDNOSUCHKEY", user["secret"])
    with pytest.raises(PredictdError) as err:
        storage.exists(uri)
    assert str(err.value) == f"AWS credentials rejected (InvalidAccessKeyId) reading {uri}"
    _as(monkeypatch, endpoint, fake_aws, user["key"], "not-the-secret")
    with pytest.raises(PredictdError) as err:
        storage.exists(uri)
    assert str(err.value) == f"AWS credentials rejected (SignatureDoesNotMatch) reading {uri}"
    assert user["secret"] not in str(err.value) and "not-the-secret" not in str(err.value)


@pytest.mark.cloud
def test_run_to_s3_with_an_unknown_key_says_the_credentials(checking_s3, fake_aws, monkeypatch,
                                                            tmp_path, write_small_run_inputs):
    from click.testing import CliRunner

    from predictd.cli import stages  # noqa: F401 - registers
    from predictd.cli.main import cli

    endpoint, user = checking_s3
    inp = write_small_run_inputs(tmp_path / "in")
    _as(monkeypatch, endpoint, fake_aws, "AKIAPREDICTDNOSUCHKEY", user["secret"])
    r = CliRunner().invoke(cli, ["run", "-m", str(inp.manifest), "-g", str(inp.sizes), "-o",
                                 "s3://predictd-auth/run2", "--no-spark"])
    assert r.exit_code == 2, r.output
    assert "AWS credentials rejected (InvalidAccessKeyId)" in r.output
    assert user["secret"] not in r.output
