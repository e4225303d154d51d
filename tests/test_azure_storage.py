"""predictd.storage on Azure Blob Storage, against Azurite (a real Blob server) on 127.0.0.1."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests

from predictd import storage
from predictd.errors import PredictdError

MiB = 1024 * 1024


# --- URIs (no server) ------------------------------------------------------------------------


def test_azure_uri_spellings_are_parsed_joined_and_displayed():
    hadoop = {
        "abfss://runs@acct1.dfs.core.windows.net/r1/run.json": ("acct1", "core.windows.net"),
        "abfs://runs@acct1.dfs.core.windows.net/r1/run.json": ("acct1", "core.windows.net"),
        "wasbs://runs@acct1.blob.core.windows.net/r1/run.json": ("acct1", "core.windows.net"),
        "wasb://runs@acct1.blob.core.chinacloudapi.cn/r1/run.json": ("acct1", "core.chinacloudapi.cn"),
    }
    for uri, (account, suffix) in hadoop.items():
        assert storage.parse_uri(uri)[0] == "az" and storage.is_object_store(uri)
        assert storage.azure_blob(uri) == (account, suffix, "runs", "r1/run.json")
        assert storage.display_uri(uri) == uri  # CONTAINER@ACCOUNT is not a user name
    for uri in ("az://runs/r1/run.json", "abfs://runs/r1/run.json", "AZ://runs/r1/run.json"):
        assert storage.azure_blob(uri) == (None, "core.windows.net", "runs", "r1/run.json")
    assert storage.join("abfss://runs@acct1.dfs.core.windows.net/r1/", "tracks", "a.bw") == \
        "abfss://runs@acct1.dfs.core.windows.net/r1/tracks/a.bw"
    shown = storage.display_uri("az://runs/r1/a.bw?sv=2024-01-01&sp=r&sig=SECRETSIG")
    assert "SECRETSIG" not in shown and "sv=2024-01-01" in shown
    with pytest.raises(PredictdError, match="Azure URI has no container: az:///x"):
        storage.parse_uri("az:///x")
    with pytest.raises(PredictdError, match=r"expected abfss://CONTAINER@ACCOUNT\.dfs\.core"):
        storage.parse_uri("abfss://runs@acct1.example.org/x")


def test_azure_without_an_account_is_one_clear_line(monkeypatch):
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(PredictdError, match="no Azure storage account: set AZURE_STORAGE_ACCOUNT"):
        storage.read_bytes("az://runs/r1/run.json")


# --- Azurite ---------------------------------------------------------------------------------


def _container(container):
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(
        os.environ["AZURE_STORAGE_CONNECTION_STRING"]).get_container_client(container)


@pytest.mark.cloud
def test_azure_write_read_list_delete_private_by_default(azure_endpoint, azurite_server):
    c = azure_endpoint
    storage.write_text_atomic(f"az://{c}/run/run.json", json.dumps({"ok": 1}))
    storage.write_bytes_atomic(f"az://{c}/runner.txt", b"x")  # shares the prefix "run" textually
    assert json.loads(storage.read_text(f"az://{c}/run/run.json")) == {"ok": 1}
    assert storage.exists(f"az://{c}/run/run.json")
    assert not storage.exists(f"az://{c}/run/none.json")
    assert storage.exists(f"az://{c}/run/") and not storage.exists(f"az://{c}/nothing/")
    assert storage.list_prefix(f"az://{c}/run") == [("run.json", 9)]
    # private: the container allows no anonymous reads
    assert _container(c).get_container_access_policy()["public_access"] is None
    anonymous = f"http://127.0.0.1:{azurite_server.port}/{azurite_server.account}/{c}/run/run.json"
    assert requests.get(anonymous, timeout=10).status_code in (403, 404)
    # the Hadoop spelling of the same account reaches the same blobs
    hadoop = f"abfss://{c}@{azurite_server.account}.dfs.core.windows.net/run"
    assert storage.list_prefix(hadoop) == [("run.json", 9)]

    storage.delete_prefix(f"az://{c}/run")
    assert storage.list_prefix(f"az://{c}/run") == []
    assert storage.read_bytes(f"az://{c}/runner.txt") == b"x"
    with pytest.raises(PredictdError, match="refusing to delete a whole container"):
        storage.delete_prefix(f"az://{c}/")


@pytest.mark.cloud
def test_azure_public_opens_the_container_to_anonymous_reads(azure_endpoint, azurite_server):
    c = azure_endpoint
    storage.write_bytes_atomic(f"az://{c}/hub/hub.txt", b"hub", public=True)
    assert _container(c).get_container_access_policy()["public_access"] == "blob"
    anonymous = f"http://127.0.0.1:{azurite_server.port}/{azurite_server.account}/{c}/hub/hub.txt"
    assert requests.get(anonymous, timeout=10).content == b"hub"


@pytest.mark.cloud
def test_azure_missing_container_and_blob(azure_endpoint, tmp_path):
    c = azure_endpoint
    for call in (storage.read_bytes, lambda u: storage.fetch_to_local(u, tmp_path),
                 storage.AzureRangeReader):
        with pytest.raises(PredictdError, match=f"^Azure blob not found: az://{c}/no/such.bw$"):
            call(f"az://{c}/no/such.bw")
        with pytest.raises(PredictdError, match="^Azure container 'no-such-container' does not exist"):
            call("az://no-such-container/x.bw")
    with pytest.raises(PredictdError, match="Azure container 'no-such-container' does not exist"):
        storage.write_bytes_atomic("az://no-such-container/x.bw", b"x")
    with pytest.raises(PredictdError, match="names a container but no blob"):
        storage.read_bytes(f"az://{c}")


@pytest.mark.cloud
def test_azure_wrong_key_is_one_line_without_the_key(azure_endpoint, azurite_server, monkeypatch):
    c = azure_endpoint
    storage.write_bytes_atomic(f"az://{c}/x.bw", b"x")
    wrong = "A" * 20 + azurite_server.key[20:]
    # by connection string, and by account name + key against an explicit endpoint
    settings = [{"AZURE_STORAGE_CONNECTION_STRING": azurite_server.connection_string(azurite_server.port, wrong)},
                {"AZURE_STORAGE_ACCOUNT": azurite_server.account, "AZURE_STORAGE_KEY": wrong,
                 "AZURE_STORAGE_BLOB_ENDPOINT":
                     f"http://127.0.0.1:{azurite_server.port}/{azurite_server.account}"}]
    for env in settings:
        monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        for call in (lambda: storage.read_bytes(f"az://{c}/x.bw"),
                     lambda: storage.list_prefix(f"az://{c}/"),
                     lambda: storage.write_bytes_atomic(f"az://{c}/y.bw", b"y")):
            with pytest.raises(PredictdError) as err:
                call()
            msg = str(err.value)
            # Azurite answers a bad signature with 403 AuthorizationFailure, Azure with
            # AuthenticationFailed: both name the blob and blame the credentials
            assert "\n" not in msg and f"az://{c}/" in msg and "credentials" in msg, msg
            assert wrong not in msg and azurite_server.key not in msg
        for k in env:
            monkeypatch.delenv(k)
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_server.connection)


@pytest.mark.cloud
def test_azure_account_key_and_sas_credentials(azure_endpoint, azurite_server, monkeypatch):
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    c = azure_endpoint
    storage.write_bytes_atomic(f"az://{c}/x.bw", b"by connection string")
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    monkeypatch.setenv("AZURE_STORAGE_BLOB_ENDPOINT",
                       f"http://127.0.0.1:{azurite_server.port}/{azurite_server.account}")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", azurite_server.account)
    monkeypatch.setenv("AZURE_STORAGE_KEY", azurite_server.key)
    assert storage.read_bytes(f"az://{c}/x.bw") == b"by connection string"
    monkeypatch.delenv("AZURE_STORAGE_KEY")
    sas = generate_account_sas(azurite_server.account, azurite_server.key,
                               ResourceTypes(container=True, object=True),
                               AccountSasPermissions(read=True, list=True),
                               expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "?" + sas)
    assert storage.read_bytes(f"az://{c}/x.bw") == b"by connection string"
    assert storage.list_prefix(f"az://{c}/") == [("x.bw", 20)]
    with pytest.raises(PredictdError) as err:  # read-only SAS: the write is refused
        storage.write_bytes_atomic(f"az://{c}/y.bw", b"y")
    assert "access denied" in str(err.value) and f"az://{c}/y.bw" in str(err.value)
    assert sas not in str(err.value)


@pytest.mark.cloud
def test_azure_upload_small_and_in_blocks_with_md5(azure_endpoint, tmp_path):
    c = azure_endpoint
    small = tmp_path / "small.bw"
    small.write_bytes(b"tiny track")
    storage.upload_file(small, f"az://{c}/tracks/small.bw")
    assert storage.read_bytes(f"az://{c}/tracks/small.bw") == b"tiny track"

    big = tmp_path / "big.bw"
    data = os.urandom(20 * MiB + 123)
    big.write_bytes(data)
    storage.upload_file(big, f"az://{c}/tracks/big.bw")
    blob = _container(c).get_blob_client("tracks/big.bw")
    committed, uncommitted = blob.get_block_list("all")
    assert len(committed) == 3 and uncommitted == []  # 3 blocks of 8 MiB
    props = blob.get_blob_properties()
    assert bytes(props.content_settings.content_md5).hex() == hashlib.md5(data).hexdigest()
    assert storage.read_bytes(f"az://{c}/tracks/big.bw") == data


@pytest.mark.cloud
def test_azure_failed_block_upload_leaves_no_blob_and_keeps_the_old(azure_endpoint, tmp_path,
                                                                     monkeypatch):
    from azure.storage.blob import BlobClient

    c = azure_endpoint
    big = tmp_path / "big.bw"
    big.write_bytes(os.urandom(20 * MiB))
    storage.write_bytes_atomic(f"az://{c}/tracks/old.bw", b"old content")
    real = BlobClient.stage_block
    calls = []

    def fail_second(self, block_id, data, *args, **kwargs):
        calls.append(block_id)
        if len(calls) == 2:
            raise ConnectionResetError("injected failure in block 2")
        return real(self, block_id, data, *args, **kwargs)

    monkeypatch.setattr(BlobClient, "stage_block", fail_second)
    for name in ("new.bw", "old.bw"):
        calls.clear()
        with pytest.raises(ConnectionResetError, match="block 2"):
            storage.upload_file(big, f"az://{c}/tracks/{name}")
    assert not storage.exists(f"az://{c}/tracks/new.bw")
    assert storage.read_bytes(f"az://{c}/tracks/old.bw") == b"old content"


@pytest.mark.cloud
@pytest.mark.slow
def test_azure_killed_upload_leaves_no_blob(azure_endpoint, tmp_path):
    """A process killed (SIGKILL-like, no cleanup) after staging blocks leaves no blob."""
    c = azure_endpoint
    big = tmp_path / "big.bw"
    big.write_bytes(os.urandom(20 * MiB))
    script = textwrap.dedent(f"""
        import os
        from azure.storage.blob import BlobClient
        from predictd import storage
        real, staged = BlobClient.stage_block, []
        def stage_then_die(self, *args, **kwargs):
            real(self, *args, **kwargs)
            staged.append(1)
            if len(staged) == 2:
                os._exit(9)
        BlobClient.stage_block = stage_then_die
        storage.UPLOAD_THREADS = 1
        storage.upload_file({str(big)!r}, "az://{c}/tracks/big.bw")
    """)
    p = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()},
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 9, p.stderr[-2000:]
    assert not storage.exists(f"az://{c}/tracks/big.bw")
    assert storage.list_prefix(f"az://{c}/") == []
    _, uncommitted = _container(c).get_blob_client("tracks/big.bw").get_block_list("uncommitted")
    assert len(uncommitted) == 2  # the staged blocks exist, invisible to every reader


@pytest.mark.cloud
def test_azure_fetch_md5_cache_and_resume(azure_endpoint, tmp_path, monkeypatch):
    c = azure_endpoint
    data = os.urandom(3 * MiB + 5)
    uri = f"az://{c}/in/E017.H3K27me3.bw"
    storage.write_bytes_atomic(uri, data)
    md5 = hashlib.md5(data).hexdigest()
    with pytest.raises(PredictdError, match=f"md5 mismatch for {uri}: expected {'a' * 32}, got {md5}"):
        storage.fetch_to_local(uri, tmp_path / "s", md5="a" * 32)

    # drop the stream after its first KiB: the download resumes from there
    real_append = storage._append_stream
    dropped, offsets = [], []

    def flaky_append(chunks, part, bar):
        offsets.append(os.path.getsize(part))
        if not dropped:
            dropped.append(True)

            def first_then_fail():
                yield next(iter(chunks))[:1024]
                from azure.core.exceptions import IncompleteReadError

                raise IncompleteReadError(message="connection broken (injected)")

            return real_append(first_then_fail(), part, bar)
        return real_append(chunks, part, bar)

    monkeypatch.setattr(storage, "_append_stream", flaky_append)
    local = storage.fetch_to_local(uri, tmp_path / "s", md5=md5)
    assert Path(local).read_bytes() == data
    assert offsets == [0, 1024]
    assert storage.fetch_to_local(uri, tmp_path / "s", md5=md5) == local
    assert offsets == [0, 1024]  # cached: nothing fetched again


@pytest.mark.cloud
def test_azure_stored_md5_is_checked_when_none_is_given(azure_endpoint, tmp_path):
    from azure.storage.blob import ContentSettings

    c = azure_endpoint
    uri = f"az://{c}/in/x.bw"
    storage.write_bytes_atomic(uri, b"the real bytes")
    assert Path(storage.fetch_to_local(uri, tmp_path / "a")).read_bytes() == b"the real bytes"
    # a blob whose stored Content-MD5 does not match its bytes (corrupted, or set wrongly)
    _container(c).get_blob_client("in/x.bw").set_http_headers(
        ContentSettings(content_md5=bytearray(hashlib.md5(b"other").digest())))
    with pytest.raises(PredictdError, match=f"md5 mismatch for {uri}: expected "
                                            f"{hashlib.md5(b'other').hexdigest()}"):
        storage.fetch_to_local(uri, tmp_path / "b")
    assert not os.listdir(tmp_path / "b") or all(n.endswith(".lock") for n in os.listdir(tmp_path / "b"))


@pytest.mark.cloud
def test_azure_range_reader_reads_only_what_is_asked_and_pins_the_etag(azure_endpoint):
    c = azure_endpoint
    data = bytes(range(256)) * 4096  # 1 MiB
    uri = f"az://{c}/blob.bin"
    storage.write_bytes_atomic(uri, data)
    with storage.open_random_access(uri) as fh:
        assert isinstance(fh, storage.AzureRangeReader)
        assert fh.size == len(data) and fh.seekable()
        fh.seek(1000)
        assert fh.read(10) == data[1000:1010] and fh.tell() == 1010
        fh.seek(-5, 2)
        assert fh.read() == data[-5:] and fh.read(3) == b""
        assert fh.requests == 2 and fh.fetched == 15
        # replaced while open: the next range is refused, not read from the new version
        storage.write_bytes_atomic(uri, b"new" + data)
        fh.seek(0)
        with pytest.raises(PredictdError, match="changed while it was being read"):
            fh.read(8)


@pytest.mark.cloud
def test_tensor_block_on_azure_is_read_by_column_ranges(azure_endpoint, monkeypatch):
    import numpy as np

    from predictd import tensor

    rng = np.random.default_rng(0)
    names = [f"c{i}.a{j}" for i in range(20) for j in range(10)]
    X = rng.random((20_000, len(names))).astype(np.float32)
    X[rng.random(X.shape) < 0.01] = np.nan
    root = f"az://{azure_endpoint}/tensor"
    tensor.write_block(root, "chr1", 0, 0, X, names, 25)
    size = dict(storage.list_prefix(root))["chrom=chr1/block=000000.parquet"]
    readers = []
    real = storage.AzureRangeReader

    class Spy(real):
        def __init__(self, uri):
            super().__init__(uri)
            readers.append(self)

    monkeypatch.setattr(storage, "AzureRangeReader", Spy)
    bins, got = tensor.read_block(root, "chr1", 0, [names[5], names[77], names[150]])
    np.testing.assert_array_equal(got, X[:, [5, 77, 150]])
    np.testing.assert_array_equal(bins, np.arange(20_000))
    assert readers[0].fetched < size / 10, (readers[0].fetched, size)
    with pytest.raises(PredictdError, match="Azure blob not found"):
        tensor.read_block(root, "chr1", 1, [names[5]])


@pytest.mark.cloud
def test_azure_unreachable_endpoint_names_the_uri_without_secrets(azure_endpoint, azurite_server,
                                                                   monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_server.connection_string(port))
    monkeypatch.setattr(storage, "AZURE_MAX_ATTEMPTS", 1)
    monkeypatch.setattr(storage, "HTTP_TIMEOUT", (2, 2))
    with pytest.raises(PredictdError) as err:
        storage.write_text_atomic(f"az://{azure_endpoint}/x.txt", "x")
    msg = str(err.value)
    assert msg.startswith("cannot connect to the Azure endpoint writing az://") and "\n" not in msg
    assert azurite_server.key not in msg
