"""Where tracks, tensors and outputs live: local paths, ``file://``, ``http(s)://``, ``s3://``,
Azure Blob Storage (``az://``, ``abfs[s]://``, ``wasb[s]://``) and Google Cloud Storage (``gs://``).

Every function takes a URI string (or a local path) and hides the transport. Writes are atomic:
a local file is written beside its destination and renamed; an S3 object is written by one PUT or
by a multipart upload that is completed only when every part is in (and aborted otherwise), so
readers never see half a file. Downloads resume from a ``.part`` file and are skipped when the
destination already holds the right bytes.

S3 goes through boto3's default credential chain and honours ``AWS_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_S3`` (botocore >= 1.31 reads them itself). Objects are private unless
``public=True``: no ACL is sent by default, which keeps them private and also works on buckets
with ACLs disabled (the S3 default since 2023), where even ``ACL="private"`` is refused.

Azure goes through the azure-storage-blob SDK. ``az://CONTAINER/PATH`` and ``abfs://CONTAINER/PATH``
take the account from the environment; the Hadoop spellings
``abfs[s]://CONTAINER@ACCOUNT.dfs.core.windows.net/PATH`` and
``wasb[s]://CONTAINER@ACCOUNT.blob.core.windows.net/PATH`` name it. Credentials, first found wins:
``AZURE_STORAGE_CONNECTION_STRING`` (when it is for that account), ``AZURE_STORAGE_KEY``,
``AZURE_STORAGE_SAS_TOKEN``, then azure-identity's ``DefaultAzureCredential`` (managed identity
on a cluster, ``az login``, ...). A large blob is written as staged blocks and committed by one
block-list commit when every block is in, so a killed upload leaves no blob; every request carries
an MD5 the service checks, and the whole file's MD5 is stored as the blob's ``Content-MD5``,
which downloads verify. Azure has no per-blob ACL: ``public=True`` opens the container to
anonymous reads of its blobs (``blob`` access), or fails when the account forbids it.

GCS goes through google-cloud-storage with Application Default Credentials and honours
``STORAGE_EMULATOR_HOST``. A large file is a resumable upload, whose object exists only once the
last chunk is in; the service checks each upload's MD5. Reads name the object's generation, so
a replaced object is an error, not a mix of two. ``public=True`` sends the ``publicRead`` ACL.

Examples
--------
>>> parse_uri("s3://bucket/runs/r1/model.json")
('s3', 'bucket/runs/r1/model.json')
>>> join("s3://bucket/runs/", "r1", "tracks/E003.H3K4me3.imputed.bw")
's3://bucket/runs/r1/tracks/E003.H3K4me3.imputed.bw'
>>> parse_uri("abfss://runs@myaccount.dfs.core.windows.net/r1/run.json")
('az', 'runs@myaccount.dfs.core.windows.net/r1/run.json')
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from predictd.errors import PredictdError

__all__ = [
    "AZURE_SCHEMES",
    "OBJECT_STORES",
    "AzureRangeReader",
    "GcsRangeReader",
    "S3RangeReader",
    "azure_blob",
    "azure_url",
    "gcs_client",
    "azure_service",
    "delete_prefix",
    "display_uri",
    "download_file",
    "exists",
    "fetch_to_local",
    "file_md5",
    "is_object_store",
    "is_remote",
    "open_random_access",
    "join",
    "list_prefix",
    "parse_uri",
    "read_bytes",
    "read_text",
    "s3_client",
    "staged",
    "upload_file",
    "write_bytes_atomic",
    "write_text_atomic",
]

logger = logging.getLogger(__name__)

#: Files larger than this go to S3 as multipart uploads.
MULTIPART_THRESHOLD = 8 * 1024 * 1024
#: Part size for multipart uploads (S3 allows 5 MiB .. 5 GiB and at most 10,000 parts).
PART_SIZE = 8 * 1024 * 1024
#: Parts uploaded concurrently (uploads are network-bound; each thread holds one part in memory).
UPLOAD_THREADS = 4
#: Download attempts after a dropped connection, each resuming where the last one stopped.
DOWNLOAD_ATTEMPTS = 5
#: Attempts per S3 request (botocore "standard" retry mode: backoff with jitter on throttling,
#: 5xx and connection errors).
S3_MAX_ATTEMPTS = 4
HTTP_TIMEOUT = (15, 120)  # (connect, read) seconds

#: Attempts per Azure request (the SDK retries throttling, 5xx and connection errors with backoff).
AZURE_MAX_ATTEMPTS = 4
#: Schemes ``parse_uri`` returns for stores that hold written outputs (not read-only URLs).
OBJECT_STORES = ("s3", "az", "gs")

_CHUNK = 1024 * 1024
#: The spellings of an Azure Blob URI (``parse_uri`` gives them all as ``"az"``).
AZURE_SCHEMES = ("az", "abfs", "abfss", "wasb", "wasbs")
# CONTAINER@ACCOUNT.dfs.core.windows.net (abfs) or CONTAINER@ACCOUNT.blob.core.windows.net (wasb);
# other clouds differ only in the suffix after "dfs."/"blob.".
_AZURE_NETLOC_RE = re.compile(
    r"^(?P<container>[^@/]+)@(?P<account>[a-z0-9]{3,24})\.(?:dfs|blob)\.(?P<suffix>[a-z0-9.-]+)$",
    re.IGNORECASE)
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SECRET_PARAM_RE = re.compile(r"signature|credential|token|secret|password|key|^sig$", re.IGNORECASE)


# --- URIs ------------------------------------------------------------------------------------


def parse_uri(uri: str | os.PathLike) -> tuple[str, str]:
    """Split a URI into its scheme and location.

    Parameters
    ----------
    uri : str or os.PathLike
        A local path (``~`` expanded), ``file://`` URI, ``http(s)://`` URL, ``s3://bucket/key`` or an
        Azure URI (``az://``, ``abfs[s]://``, ``wasb[s]://``).

    Returns
    -------
    (str, str)
        ``("file", local_path)`` for local files; otherwise the lower-case scheme and everything
        after ``://`` (for S3, ``"bucket/key"``). Every Azure spelling gives the scheme ``"az"``.

    Raises
    ------
    PredictdError
        For an unsupported scheme, a ``file://`` URI naming another host, an S3 URI without a
        bucket or an Azure URI without a container.

    Examples
    --------
    >>> parse_uri("data/E003.bw")
    ('file', 'data/E003.bw')
    >>> parse_uri("file:///tmp/a%20b.bw")
    ('file', '/tmp/a b.bw')
    >>> parse_uri("HTTPS://example.org/x.bw")
    ('https', 'example.org/x.bw')
    """
    if isinstance(uri, os.PathLike):
        return "file", os.fspath(uri)
    if not isinstance(uri, str) or not uri:
        raise PredictdError(f"not a path or URI: {uri!r}")
    m = _SCHEME_RE.match(uri)
    if m is None:
        return "file", os.path.expanduser(uri)
    scheme = m.group(1).lower()
    rest = uri[m.end():]
    if scheme == "file":
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise PredictdError(f"file:// URI names another host ({parts.netloc}): {uri}")
        return "file", unquote(parts.path)
    if scheme in ("http", "https"):
        if not rest or rest.startswith("/"):
            raise PredictdError(f"URL has no host: {display_uri(uri)}")
        return scheme, rest
    if scheme == "s3":
        if not rest or rest.startswith("/"):
            raise PredictdError(f"S3 URI has no bucket: {uri}")
        return "s3", rest
    if scheme == "gs":
        if not rest or rest.startswith("/"):
            raise PredictdError(f"GCS URI has no bucket: {uri}")
        return "gs", rest
    if scheme in AZURE_SCHEMES:
        netloc = rest.partition("/")[0]
        if not netloc:
            raise PredictdError(f"Azure URI has no container: {uri}")
        if "@" in netloc and _AZURE_NETLOC_RE.match(netloc) is None:
            endpoint = "blob" if scheme.startswith("wasb") else "dfs"
            raise PredictdError(
                f"Azure URI names its account wrongly: {display_uri(uri)} (expected "
                f"{scheme}://CONTAINER@ACCOUNT.{endpoint}.core.windows.net/PATH)")
        return "az", rest
    raise PredictdError(
        f"unsupported URI scheme {scheme!r} in {display_uri(uri)} (use a local path, file://, http(s)://, "
        "s3://, gs:// or az:// / abfs[s]:// / wasb[s]://)"
    )


def is_remote(uri: str | os.PathLike) -> bool:
    """True for ``http(s)://``, ``s3://``, ``gs://`` and Azure URIs, False for local paths and
    ``file://``."""
    return parse_uri(uri)[0] != "file"


def is_object_store(uri: str | os.PathLike) -> bool:
    """True for URIs predictd can write, list and delete remotely: ``s3://``, ``gs://`` and Azure.

    >>> is_object_store("az://runs/r1"), is_object_store("https://host/r1"), is_object_store("r1")
    (True, False, False)
    """
    return parse_uri(uri)[0] in OBJECT_STORES


def check_output_prefix(uri: str | os.PathLike, what: str = "--out") -> None:
    """Refuse a bucket's or container's root as a run's OUT: its entries (``model/``,
    ``tracks/``, ``run.json``) would sit among unrelated data, which ``--overwrite`` clears by
    those names.

    >>> check_output_prefix("s3://bkt/runs/r1"); check_output_prefix("out")
    >>> check_output_prefix("s3://bkt/")
    Traceback (most recent call last):
    ...
    predictd.errors.PredictdError: --out s3://bkt/: the root of a bucket or container; give a prefix of its own, e.g. s3://bkt/run1
    """
    if not is_object_store(uri):
        return
    scheme, location = parse_uri(uri)
    key = azure_blob(os.fspath(uri))[3] if scheme == "az" else location.partition("/")[2]
    if not key.strip("/"):
        raise PredictdError(f"{what} {display_uri(os.fspath(uri))}: the root of a bucket or "
                            f"container; give a prefix of its own, e.g. "
                            f"{os.fspath(uri).rstrip('/')}/run1")


def join(prefix: str | os.PathLike, *parts: str) -> str:
    """Append path components to a local path or a URI prefix.

    Examples
    --------
    >>> join("out", "tracks", "a.bw")
    'out/tracks/a.bw'
    >>> join("s3://b/out", "/tracks/", "a.bw")
    's3://b/out/tracks/a.bw'
    """
    scheme, location = parse_uri(prefix)
    if scheme == "file" and _SCHEME_RE.match(os.fspath(prefix)) is None:
        return os.path.join(os.fspath(prefix), *(p.strip("/") for p in parts))
    base = os.fspath(prefix).rstrip("/")
    tail = "/".join(p.strip("/") for p in parts if p.strip("/"))
    return f"{base}/{tail}" if tail else base


def display_uri(uri: str) -> str:
    """The URI with any embedded password or signing parameters masked, for messages and
    stored metadata.

    Examples
    --------
    >>> display_uri("https://user:pw@host/k.bw?X-Amz-Signature=abc&v=1")
    'https://***@host/k.bw?X-Amz-Signature=%2A%2A%2A&v=1'
    >>> display_uri("abfss://runs@acct.dfs.core.windows.net/r1?sv=2024&sig=abc")
    'abfss://runs@acct.dfs.core.windows.net/r1?sv=2024&sig=%2A%2A%2A'
    """
    if not isinstance(uri, str) or "://" not in uri:
        return str(uri)
    parts = urlsplit(uri)
    netloc = parts.netloc
    # In an Azure URI the part before "@" is the container, not a user name.
    container_at_account = (parts.scheme.lower() in AZURE_SCHEMES
                            and _AZURE_NETLOC_RE.match(netloc) is not None)
    if "@" in netloc and not container_at_account:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_PARAM_RE.search(k) else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _s3_bucket_key(uri: str, need_key: bool = True) -> tuple[str, str]:
    _, location = parse_uri(uri)
    bucket, _, key = location.partition("/")
    if need_key and not key:
        raise PredictdError(f"S3 URI names a bucket but no object key: {uri}")
    return bucket, key


# --- local files -----------------------------------------------------------------------------


@contextlib.contextmanager
def _local_errors(path: str, action: str):
    """Turn OSErrors on ``path`` into one-line PredictdErrors.

    ``action`` is a gerund phrase ("reading", "writing", ...). When writing, messages name
    ``path`` (the destination) rather than any temporary file the error came from.
    """
    try:
        yield
    except PredictdError:
        raise
    except OSError as exc:
        name = path if action == "writing" else (exc.filename or path)
        if isinstance(exc, FileNotFoundError):
            msg = f"file not found: {name}" if action != "writing" else f"cannot write {name}: {exc.strerror}"
        elif isinstance(exc, IsADirectoryError):
            msg = f"is a directory, not a file: {name}"
        elif isinstance(exc, NotADirectoryError):
            msg = f"a parent of {name} is not a directory"
        elif isinstance(exc, PermissionError):
            msg = f"permission denied {action} {name}"
        elif exc.errno == errno.ENOSPC:
            msg = f"no space left on device {action} {name}"
        else:
            msg = f"error {action} {name}: {exc.strerror or exc}"
        raise PredictdError(msg) from exc


def check_readable(path: str, context: str = "") -> None:
    """Raise :class:`PredictdError` unless ``path`` is a readable regular local file; the message
    starts with ``context`` (e.g. the manifest row) and names the path."""
    if not os.path.exists(path):
        raise PredictdError(f"{context}file not found: {path}")
    if os.path.isdir(path):
        raise PredictdError(f"{context}is a directory, not a file: {path}")
    if not os.access(path, os.R_OK):
        raise PredictdError(f"{context}permission denied reading {path}")


def creation_mode() -> int:
    """The permissions a new local file gets from ``open`` under this process's umask:
    :mod:`tempfile`'s files are private (0600), and an output renamed from one must end up
    like any other file the user creates."""
    global _UMASK
    if _UMASK is None:
        try:  # Linux: read without changing it (os.umask can only be read by setting it)
            with open("/proc/self/status") as fh:
                _UMASK = next(int(line.split()[1], 8) for line in fh
                              if line.startswith("Umask:"))
        except (OSError, StopIteration, ValueError):
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return 0o666 & ~_UMASK


_UMASK: int | None = None


def _atomic_local_write(path: str, write) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, then rename over ``path``
    (with the permissions of a file created there, :func:`creation_mode`)."""
    directory = os.path.dirname(os.path.abspath(path))
    with _local_errors(path, "writing"):
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        try:
            os.fchmod(fd, creation_mode())
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise


def file_md5(path: str | os.PathLike) -> str:
    """Hex MD5 of a local file, read in 1 MiB chunks."""
    path = os.fspath(path)
    digest = hashlib.md5(usedforsecurity=False)
    with _local_errors(path, "reading"), open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- S3 --------------------------------------------------------------------------------------

_client_lock = threading.Lock()
_clients: dict[tuple, object] = {}
_CLIENT_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_ACCESS_KEY_ID", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
)


def s3_client():
    """A boto3 S3 client from the default credential chain, shared within a process.

    The client is rebuilt when the relevant ``AWS_*`` environment variables change (tests point
    it at a local server) or after a fork (clients must not cross process boundaries).
    """
    key = (os.getpid(), S3_MAX_ATTEMPTS, HTTP_TIMEOUT) + tuple(os.environ.get(k) for k in _CLIENT_ENV)
    client = _clients.get(key)
    if client is None:
        with _client_lock:
            client = _clients.get(key)
            if client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
                    connect_timeout=HTTP_TIMEOUT[0],
                    read_timeout=HTTP_TIMEOUT[1],
                    max_pool_connections=max(10, UPLOAD_THREADS * 2),
                )
                # A fresh session per client: boto3's default session is not thread-safe to create.
                client = boto3.session.Session().client("s3", config=config)
                _clients.clear()
                _clients[key] = client
    return client


_S3_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_S3_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccountProblem"}
_S3_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}


#: Requests whose answer has no body: a 403 there does not say why.
_S3_HEADS = ("HeadObject", "HeadBucket")


def _s3_forbidden_code(uri: str, operation: str) -> str | None:
    """The error code behind a HEAD's bare 403, from the same question asked with a GET (one
    byte of the object, or one key of the bucket): ``InvalidAccessKeyId`` or
    ``SignatureDoesNotMatch`` for credentials AWS does not know, ``AccessDenied`` for a
    policy. None when the GET is allowed or fails otherwise."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = _s3_bucket_key(uri, need_key=False)
    try:
        if operation == "HeadObject" and key:
            s3_client().get_object(Bucket=bucket, Key=key, Range="bytes=0-0")["Body"].close()
        else:
            s3_client().list_objects_v2(Bucket=bucket, MaxKeys=1)
    except ClientError as exc:
        return str(exc.response.get("Error", {}).get("Code", "")) or None
    except BotoCoreError:
        return None
    return None


@contextlib.contextmanager
def _s3_errors(uri: str, action: str):
    """Turn boto3/botocore failures into one-line PredictdErrors naming ``uri``.

    Only the error code and the server's message are shown: they never contain credentials.
    """
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    try:
        yield
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "")) or str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        bucket = parse_uri(uri)[1].partition("/")[0]
        if code in ("403", "Forbidden") and getattr(exc, "operation_name", "") in _S3_HEADS:
            code = _s3_forbidden_code(uri, exc.operation_name) or code
        if code == "NoSuchBucket":
            msg = f"S3 bucket {bucket!r} does not exist ({action} {uri})"
        elif code in _S3_NOT_FOUND:
            msg = f"S3 object not found: {uri}"
        elif code in _S3_DENIED:
            msg = f"access denied {action} {uri} (check the AWS credentials and the bucket policy)"
        elif code in _S3_BAD_CREDENTIALS:
            msg = f"AWS credentials rejected ({code}) {action} {uri}"
        elif code in ("PreconditionFailed", "412"):
            msg = f"S3 object changed while it was being read: {uri}"
        elif code == "AccessControlListNotSupported":
            msg = (f"bucket {bucket!r} has ACLs disabled, so {uri} cannot be made public per object; "
                   "grant read access with a bucket policy instead")
        else:
            msg = f"S3 error {code or 'unknown'} {action} {uri}: {err.get('Message', '')}".rstrip(": ")
        raise PredictdError(msg) from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise PredictdError(
            f"no usable AWS credentials {action} {uri} (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE or an instance role)"
        ) from exc
    except EndpointConnectionError as exc:
        raise PredictdError(f"cannot connect to the S3 endpoint {action} {uri}: {exc}") from exc
    except BotoCoreError as exc:
        raise PredictdError(f"S3 request failed {action} {uri}: {exc}") from exc


def _s3_head(uri: str) -> dict | None:
    """head_object, or None if the object is missing (error if the bucket is missing)."""
    from botocore.exceptions import ClientError

    bucket, key = _s3_bucket_key(uri)
    client = s3_client()
    with _s3_errors(uri, "reading"):
        try:
            return client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) not in _S3_NOT_FOUND:
                raise
        # HEAD has no body, so a missing bucket also reads as 404: tell the two apart.
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _S3_NOT_FOUND | {"NoSuchBucket"}:
                raise PredictdError(f"S3 bucket {bucket!r} does not exist (reading {uri})") from exc
            raise
    return None


def _s3_extra_args(public: bool) -> dict:
    return {"ACL": "public-read"} if public else {}


def _s3_multipart_upload(local_path: str, uri: str, size: int, public: bool) -> None:
    """Upload in parts; complete only if every part succeeded, abort on any failure."""
    bucket, key = _s3_bucket_key(uri)
    client = s3_client()
    part_size = max(PART_SIZE, -(-size // 10_000))
    n_parts = -(-size // part_size)
    with _s3_errors(uri, "uploading to"):
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, **_s3_extra_args(public))["UploadId"]

    def send(number: int) -> dict:
        offset = (number - 1) * part_size
        with _local_errors(local_path, "reading"), open(local_path, "rb") as fh:
            fh.seek(offset)
            body = fh.read(min(part_size, size - offset))
        resp = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
        part = {"PartNumber": number, "ETag": resp["ETag"]}
        # botocore adds a checksum to each part by default; S3 wants it repeated on completion.
        part.update({k: v for k, v in resp.items() if k.startswith("Checksum") and k != "ChecksumType"})
        return part

    pool = ThreadPoolExecutor(max_workers=min(UPLOAD_THREADS, n_parts), thread_name_prefix="s3-part")
    try:
        with _s3_errors(uri, "uploading to"):
            futures = [pool.submit(send, n) for n in range(1, n_parts + 1)]
            parts = [f.result() for f in futures]
            pool.shutdown(wait=True)
            client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
    except BaseException:
        # Stop queued parts and wait for running ones, so no part lands after the abort.
        pool.shutdown(wait=True, cancel_futures=True)
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except Exception as exc:  # the original failure matters more; say what is left behind
            logger.warning("could not abort multipart upload %s of %s: %s", upload_id, uri, exc)
        raise


# --- Azure Blob Storage ----------------------------------------------------------------------

_AZURE_CLIENT_ENV = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY",
                     "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_BLOB_ENDPOINT", "AZURE_CLIENT_ID",
                     "AZURE_TENANT_ID")
_azure_clients: dict[tuple, object] = {}
_azure_public: set[tuple] = set()


def azure_blob(uri: str) -> tuple[str | None, str, str, str]:
    """The account (None when the URI leaves it to the environment), endpoint suffix, container
    and blob path of an Azure URI.

    Examples
    --------
    >>> azure_blob("wasbs://runs@acct.blob.core.windows.net/r1/run.json")
    ('acct', 'core.windows.net', 'runs', 'r1/run.json')
    >>> azure_blob("az://runs/r1/")
    (None, 'core.windows.net', 'runs', 'r1/')
    """
    scheme, location = parse_uri(uri)
    if scheme != "az":
        raise PredictdError(f"not an Azure URI: {display_uri(os.fspath(uri))}")
    netloc, _, path = location.partition("/")
    m = _AZURE_NETLOC_RE.match(netloc)
    if m is None:
        return None, "core.windows.net", netloc, path
    return m.group("account").lower(), m.group("suffix").lower(), m.group("container"), path


def azure_url(uri: str) -> str:
    """The blob's plain HTTP(S) URL (no signature), as a browser or ``curl`` would fetch it
    when the container allows anonymous reads; an emulator's or private endpoint's URL when
    the credentials point there."""
    account, suffix, container, path = azure_blob(uri)
    url = azure_service(account, suffix).get_blob_client(container, path).url
    return urlunsplit(urlsplit(url)._replace(query="")).rstrip("/")


def _connection_string_account(conn: str) -> str | None:
    fields = dict(item.split("=", 1) for item in conn.split(";") if "=" in item)
    name = fields.get("AccountName")
    return name.lower() if name else None


def azure_service(account: str | None = None, suffix: str = "core.windows.net"):
    """A ``BlobServiceClient`` for ``account`` from Azure's usual credential chain, shared
    within a process (rebuilt when the ``AZURE_*`` variables change, or after a fork).

    ``AZURE_STORAGE_CONNECTION_STRING`` is used when it is for ``account`` (or ``account`` is
    None); otherwise the account (``account`` or ``AZURE_STORAGE_ACCOUNT``) is reached at
    ``https://ACCOUNT.blob.SUFFIX`` (or ``AZURE_STORAGE_BLOB_ENDPOINT``: a private endpoint, an
    emulator) with ``AZURE_STORAGE_KEY``, else ``AZURE_STORAGE_SAS_TOKEN``, else
    ``DefaultAzureCredential``.
    """
    key = (os.getpid(), account, suffix, AZURE_MAX_ATTEMPTS, HTTP_TIMEOUT) + tuple(
        os.environ.get(k) for k in _AZURE_CLIENT_ENV)
    client = _azure_clients.get(key)
    if client is not None:
        return client
    with _client_lock:
        client = _azure_clients.get(key)
        if client is not None:
            return client
        from azure.storage.blob import BlobServiceClient, ExponentialRetry

        # The SDK logs every request's headers at INFO: noise in a run's log (and a place a
        # credential could show up if it ever stopped redacting them).
        # DefaultAzureCredential warns about every source it tried; our error says what to set.
        for name, level in (("azure", logging.WARNING), ("azure.identity", logging.ERROR)):
            sdk_log = logging.getLogger(name)
            sdk_log.setLevel(max(sdk_log.getEffectiveLevel(), level))
        options = {
            "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2,
                                             retry_total=AZURE_MAX_ATTEMPTS - 1, random_jitter_range=1),
            "connection_timeout": HTTP_TIMEOUT[0],
            "read_timeout": HTTP_TIMEOUT[1],
            # GETs of 8 MiB (the SDK's 32 MiB first GET and 4 MiB chunks measured slower on a
            # 64 MiB download, and a resume restarts from the last whole chunk written)
            "max_single_get_size": PART_SIZE,
            "max_chunk_get_size": PART_SIZE,
        }
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        conn_account = _connection_string_account(conn) if conn else None
        if conn and (account is None or conn_account in (None, account)):
            try:
                client = BlobServiceClient.from_connection_string(conn, **options)
            except ValueError as exc:  # the SDK's message quotes no secret, but keep it short
                raise PredictdError("AZURE_STORAGE_CONNECTION_STRING is not a valid connection "
                                    "string") from exc
        else:
            account = account or (os.environ.get("AZURE_STORAGE_ACCOUNT") or "").lower() or None
            if account is None:
                raise PredictdError(
                    "no Azure storage account: set AZURE_STORAGE_ACCOUNT or "
                    "AZURE_STORAGE_CONNECTION_STRING, or name it in the URI "
                    "(abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/PATH)")
            if os.environ.get("AZURE_STORAGE_KEY"):
                credential = {"account_name": account, "account_key": os.environ["AZURE_STORAGE_KEY"]}
            elif os.environ.get("AZURE_STORAGE_SAS_TOKEN"):
                credential = os.environ["AZURE_STORAGE_SAS_TOKEN"].lstrip("?")
            else:
                try:
                    from azure.identity import DefaultAzureCredential
                except ImportError as exc:
                    raise PredictdError(
                        f"no Azure credentials for account {account!r}: set AZURE_STORAGE_KEY, "
                        "AZURE_STORAGE_SAS_TOKEN or AZURE_STORAGE_CONNECTION_STRING, or install "
                        "azure-identity for managed identity / az login") from exc
                credential = DefaultAzureCredential()
            url = os.environ.get("AZURE_STORAGE_BLOB_ENDPOINT") or f"https://{account}.blob.{suffix}"
            client = BlobServiceClient(url, credential=credential, **options)
        # Drop clients of this process made for other settings; other accounts stay.
        for old in [k for k in _azure_clients if k[0] != key[0] or k[3:] != key[3:]]:
            del _azure_clients[old]
        _azure_clients[key] = client
    return client


def _az_blob_client(uri: str, need_blob: bool = True):
    account, suffix, container, path = azure_blob(uri)
    if need_blob and (not path or path.endswith("/")):
        raise PredictdError(f"Azure URI names a container but no blob: {display_uri(uri)}")
    return azure_service(account, suffix).get_blob_client(container, path)


def _az_container_client(uri: str):
    account, suffix, container, _ = azure_blob(uri)
    return azure_service(account, suffix).get_container_client(container)


def _az_code(exc) -> str:
    code = getattr(exc, "error_code", None)
    code = getattr(code, "value", code)  # StorageErrorCode is a str enum
    return str(code or getattr(exc, "status_code", "") or "")


@contextlib.contextmanager
def _az_errors(uri: str, action: str):
    """Turn Azure SDK failures into one-line PredictdErrors naming ``uri``.

    Only the service's error code and the first line of its message are shown: neither quotes
    a key or a signature.
    """
    from azure.core.exceptions import (
        AzureError,
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
    )

    shown = display_uri(uri)
    try:
        yield
    except PredictdError:
        raise
    except ClientAuthenticationError as exc:
        if exc.status_code is None:  # raised by a credential (azure-identity), not the service
            raise PredictdError(
                f"no usable Azure credentials {action} {shown} (set AZURE_STORAGE_CONNECTION_STRING, "
                "AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN, or give the machine a managed "
                "identity)") from exc
        raise PredictdError(f"Azure credentials rejected ({_az_code(exc)}) {action} {shown}") from exc
    except HttpResponseError as exc:
        code = _az_code(exc)
        container = azure_blob(uri)[2]
        if code == "ContainerNotFound":
            msg = f"Azure container {container!r} does not exist ({action} {shown})"
        elif code in ("BlobNotFound", "404"):
            msg = f"Azure blob not found: {shown}"
        elif code in ("AuthenticationFailed", "InvalidAuthenticationInfo", "401"):
            msg = f"Azure credentials rejected ({code}) {action} {shown}"
        elif code in ("AuthorizationFailure", "AuthorizationPermissionMismatch",
                      "AuthorizationResourceTypeMismatch", "InsufficientAccountPermissions", "403"):
            msg = (f"access denied ({code}) {action} {shown} (check the Azure credentials and "
                   "their role on the container)")
        elif code in ("ConditionNotMet", "412"):
            msg = f"Azure blob changed while it was being read: {shown}"
        elif code == "PublicAccessNotPermitted":
            msg = (f"the storage account does not allow public access, so {shown} cannot be made "
                   "public; share it with a SAS URL instead")
        else:
            first = (str(exc.message or exc).strip().splitlines() or [""])[0]
            msg = f"Azure error {code or 'unknown'} {action} {shown}: {first}".rstrip(": ")
        raise PredictdError(msg) from exc
    except ServiceRequestError as exc:
        raise PredictdError(f"cannot connect to the Azure endpoint {action} {shown}: "
                            f"{type(exc).__name__}") from exc
    except AzureError as exc:
        raise PredictdError(f"Azure request failed {action} {shown}: {type(exc).__name__}") from exc


def _az_head(uri: str):
    """The blob's properties, or None if it is missing (error if the container is missing)."""
    from azure.core.exceptions import ResourceNotFoundError

    blob = _az_blob_client(uri)
    with _az_errors(uri, "reading"):
        try:
            return blob.get_blob_properties()
        except ResourceNotFoundError as exc:
            if _az_code(exc) == "ContainerNotFound":
                raise
            return None


def _az_stored_md5(props) -> str | None:
    md5 = props.content_settings.content_md5 if props is not None else None
    return bytes(md5).hex() if md5 else None


def _az_make_public(uri: str) -> None:
    """Let anyone read the container's blobs by URL (Azure has no per-blob ACL)."""
    account, suffix, container, _ = azure_blob(uri)
    done = (os.getpid(), account, suffix, container)
    if done in _azure_public:
        return
    client = _az_container_client(uri)
    with _az_errors(uri, "making public"):
        policy = client.get_container_access_policy()
        if policy.get("public_access") not in ("blob", "container"):
            client.set_container_access_policy(
                signed_identifiers={i.id: i.access_policy for i in policy.get("signed_identifiers", [])},
                public_access="blob")
            logger.warning("Azure container %r now allows anonymous reads of its blobs", container)
    _azure_public.add(done)


def _az_content_settings(md5_hex: str):
    from azure.storage.blob import ContentSettings

    return ContentSettings(content_md5=bytearray(bytes.fromhex(md5_hex)))


def _az_put(uri: str, data: bytes, public: bool) -> None:
    """One Put Blob: all or nothing, its MD5 checked by the service and stored with the blob."""
    if public:
        _az_make_public(uri)
    blob = _az_blob_client(uri)
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    with _az_errors(uri, "writing"):
        blob.upload_blob(data, overwrite=True, validate_content=True,
                         content_settings=_az_content_settings(md5))


def _az_block_upload(local_path: str, uri: str, size: int, public: bool) -> None:
    """Stage the file as blocks (in parallel, each MD5-checked by the service), then commit the
    block list: the blob appears, or is replaced, only at that commit. A failed or killed upload
    leaves uncommitted blocks only, which Azure discards (on the blob's next commit, or after a
    week) and which no reader sees."""
    import base64
    import uuid

    from azure.storage.blob import BlobBlock

    if public:
        _az_make_public(uri)
    blob = _az_blob_client(uri)
    block_size = max(PART_SIZE, -(-size // 50_000))  # a blob holds at most 50,000 blocks
    n_blocks = -(-size // block_size)
    # Block ids of one blob must have equal lengths; the random tag keeps two writers' blocks apart.
    tag = uuid.uuid4().hex[:12]
    ids = [base64.b64encode(f"{tag}-{i:06d}".encode()).decode() for i in range(n_blocks)]

    def send(i: int) -> None:
        offset = i * block_size
        with _local_errors(local_path, "reading"), open(local_path, "rb") as fh:
            fh.seek(offset)
            body = fh.read(min(block_size, size - offset))
        blob.stage_block(ids[i], body, length=len(body), validate_content=True)

    md5 = file_md5(local_path)
    pool = ThreadPoolExecutor(max_workers=min(UPLOAD_THREADS, n_blocks), thread_name_prefix="az-block")
    try:
        with _az_errors(uri, "uploading to"):
            for future in [pool.submit(send, i) for i in range(n_blocks)]:
                future.result()
            pool.shutdown(wait=True)
            blob.commit_block_list([BlobBlock(block_id=b) for b in ids],
                                   content_settings=_az_content_settings(md5))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # no block lands after we give up
        raise


def _az_list(uri: str) -> list[tuple[str, int]]:
    _, _, _, prefix = azure_blob(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    with _az_errors(uri, "listing"):
        return [(b.name[len(prefix):], int(b.size))
                for b in _az_container_client(uri).list_blobs(name_starts_with=prefix or None)]


def _az_fetch_range(uri: str, part: str, offset: int, version: str | None, bar) -> None:
    from azure.core import MatchConditions
    from azure.core.exceptions import HttpResponseError, IncompleteReadError, ServiceResponseError

    kwargs = {"max_concurrency": 1}
    if offset:
        kwargs["offset"] = offset
    if version:  # fail rather than splice two versions of the blob
        kwargs.update(etag=version, match_condition=MatchConditions.IfNotModified)
    blob = _az_blob_client(uri)
    with _az_errors(uri, "downloading"):
        try:
            stream = blob.download_blob(**kwargs)
        except ServiceResponseError as exc:
            raise _Retryable(type(exc).__name__) from exc
        except HttpResponseError as exc:
            if _az_code(exc) == "ConditionNotMet":
                raise PredictdError(f"Azure blob changed while downloading {display_uri(uri)}; "
                                    "run again") from exc
            raise
    try:
        _append_stream(stream.chunks(), part, bar)
    except (ServiceResponseError, IncompleteReadError, ConnectionError) as exc:
        raise _Retryable(type(exc).__name__) from exc


# --- Google Cloud Storage --------------------------------------------------------------------

_GCS_CLIENT_ENV = ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT")
_gcs_clients: dict[tuple, object] = {}


def gcs_client():
    """A ``google.cloud.storage.Client`` from Application Default Credentials, shared within a
    process (rebuilt when the ``GOOGLE_*`` / ``STORAGE_EMULATOR_HOST`` variables change, or
    after a fork). With ``STORAGE_EMULATOR_HOST`` (an emulator) and no
    ``GOOGLE_APPLICATION_CREDENTIALS``, requests are anonymous."""
    key = (os.getpid(), HTTP_TIMEOUT) + tuple(os.environ.get(k) for k in _GCS_CLIENT_ENV)
    client = _gcs_clients.get(key)
    if client is not None:
        return client
    with _client_lock:
        client = _gcs_clients.get(key)
        if client is not None:
            return client
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import storage as gcs

        project = os.environ.get("GOOGLE_CLOUD_PROJECT")
        try:
            emulator = os.environ.get("STORAGE_EMULATOR_HOST")
            if emulator and not os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
                from google.auth.credentials import AnonymousCredentials

                client = gcs.Client(project=project or "predictd", credentials=AnonymousCredentials())
            else:
                client = gcs.Client(project=project)
        except DefaultCredentialsError as exc:
            raise PredictdError(
                "no usable Google Cloud credentials (run `gcloud auth application-default login`, "
                "set GOOGLE_APPLICATION_CREDENTIALS, or run on a VM with a service account)") from exc
        _gcs_clients.clear()
        _gcs_clients[key] = client
    return client


def _gcs_bucket_key(uri: str, need_key: bool = True) -> tuple[str, str]:
    _, location = parse_uri(uri)
    bucket, _, key = location.partition("/")
    if need_key and (not key or key.endswith("/")):
        raise PredictdError(f"GCS URI names a bucket but no object: {uri}")
    return bucket, key


@contextlib.contextmanager
def _gcs_errors(uri: str, action: str):
    """Turn google-cloud-storage failures into one-line PredictdErrors naming ``uri`` (the
    status and the server's reason only: never a token)."""
    import requests
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import DefaultCredentialsError, RefreshError, TransportError

    bucket = parse_uri(uri)[1].partition("/")[0]
    try:
        yield
    except PredictdError:
        raise
    except gexc.NotFound as exc:
        if gcs_client().lookup_bucket(bucket) is None:
            raise PredictdError(f"GCS bucket {bucket!r} does not exist ({action} {uri})") from exc
        raise PredictdError(f"GCS object not found: {uri}") from exc
    except gexc.Unauthorized as exc:
        raise PredictdError(f"Google Cloud credentials rejected (401) {action} {uri}") from exc
    except gexc.Forbidden as exc:
        raise PredictdError(f"access denied {action} {uri} (check the credentials' IAM roles on "
                            "the bucket)") from exc
    except gexc.PreconditionFailed as exc:
        raise PredictdError(f"GCS object changed while it was being read: {uri}") from exc
    except gexc.BadRequest as exc:
        if "uniform bucket-level access" in str(exc).lower():
            raise PredictdError(f"bucket {bucket!r} has uniform bucket-level access, so {uri} cannot "
                                "be made public per object; grant allUsers read on the bucket "
                                "instead") from exc
        raise PredictdError(f"GCS error 400 {action} {uri}: {exc.message}") from exc
    except gexc.GoogleAPICallError as exc:
        raise PredictdError(f"GCS error {exc.code} {action} {uri}: {exc.message}") from exc
    except (DefaultCredentialsError, RefreshError) as exc:
        raise PredictdError(f"no usable Google Cloud credentials {action} {uri} "
                            f"({type(exc).__name__})") from exc
    except (requests.exceptions.ConnectionError, TransportError) as exc:
        raise PredictdError(f"cannot connect to the GCS endpoint {action} {uri}: "
                            f"{type(exc).__name__}") from exc


def _gcs_head(uri: str):
    """The object's metadata (``google.cloud.storage.Blob``), or None if it is missing (error
    if the bucket is missing)."""
    bucket, key = _gcs_bucket_key(uri)
    with _gcs_errors(uri, "reading"):
        blob = gcs_client().bucket(bucket).get_blob(key)
        if blob is None and gcs_client().lookup_bucket(bucket) is None:
            raise PredictdError(f"GCS bucket {bucket!r} does not exist (reading {uri})")
    return blob


def _gcs_stored_md5(blob) -> str | None:
    import base64

    return base64.b64decode(blob.md5_hash).hex() if blob is not None and blob.md5_hash else None


def _gcs_upload(local_path: str | None, uri: str, data: bytes | None, public: bool) -> None:
    """One upload request for small content; a resumable upload in :data:`PART_SIZE` chunks
    for large files, which creates the object only when its last chunk is in. Either way the
    service checks the content's MD5, which the object keeps (``md5Hash``)."""
    bucket, key = _gcs_bucket_key(uri)
    size = len(data) if data is not None else os.path.getsize(local_path)
    chunk = PART_SIZE if size > MULTIPART_THRESHOLD else None
    blob = gcs_client().bucket(bucket).blob(key, chunk_size=chunk)
    acl = {"predefined_acl": "publicRead"} if public else {}
    with _gcs_errors(uri, "uploading to"):
        if data is not None:
            blob.upload_from_string(data, checksum="md5", timeout=HTTP_TIMEOUT, **acl)
        else:
            with _local_errors(local_path, "reading"):
                fh = open(local_path, "rb")
            with fh:
                blob.upload_from_file(fh, size=size, checksum="md5", timeout=HTTP_TIMEOUT, **acl)


def _gcs_get(uri: str, start: int, end: int | None, generation: int | None) -> bytes:
    """Bytes ``start..end`` (inclusive) of the object's ``generation``: a replaced object's old
    generation is gone (or, with versioning, still the same bytes), never a mix of two."""
    from google.api_core import exceptions as gexc

    bucket, key = _gcs_bucket_key(uri)
    blob = gcs_client().bucket(bucket).blob(key, generation=generation)
    with _gcs_errors(uri, "reading"):
        try:
            return blob.download_as_bytes(start=start, end=end, checksum=None, timeout=HTTP_TIMEOUT)
        except gexc.NotFound as exc:
            if generation is not None and _gcs_head(uri) is not None:
                raise PredictdError(f"GCS object changed while it was being read: {uri}") from exc
            raise


def _gcs_fetch_range(uri: str, part: str, offset: int, version: str | None, bar, size: int) -> None:
    import requests
    from google.api_core.exceptions import ServerError

    generation = int(version) if version else None
    while offset < size:
        end = min(offset + PART_SIZE, size) - 1
        try:
            body = _gcs_get(uri, offset, end, generation)
        except PredictdError as exc:
            if isinstance(exc.__cause__, (requests.exceptions.ConnectionError, ServerError)):
                raise _Retryable(type(exc.__cause__).__name__) from exc
            raise
        except (requests.exceptions.RequestException, ServerError) as exc:
            raise _Retryable(type(exc).__name__) from exc
        _append_stream([body], part, bar)
        offset += len(body)


def _gcs_list(uri: str) -> list[tuple[str, int]]:
    bucket, prefix = _gcs_bucket_key(uri, need_key=False)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    with _gcs_errors(uri, "listing"):
        return [(b.name[len(prefix):], int(b.size))
                for b in gcs_client().list_blobs(bucket, prefix=prefix or None)]


# --- HTTP ------------------------------------------------------------------------------------


def _http_error(uri: str, status: int, action: str) -> PredictdError:
    if status in (404, 410):
        return PredictdError(f"not found (HTTP {status}): {display_uri(uri)}")
    if status in (401, 403):
        return PredictdError(f"access denied (HTTP {status}) {action} {display_uri(uri)}")
    return PredictdError(f"HTTP {status} {action} {display_uri(uri)}")


@contextlib.contextmanager
def _http_errors(uri: str, action: str):
    import requests

    try:
        yield
    except requests.exceptions.ConnectionError as exc:
        raise PredictdError(f"cannot connect {action} {display_uri(uri)}: {type(exc).__name__}") from exc
    except requests.exceptions.Timeout as exc:
        raise PredictdError(f"timed out {action} {display_uri(uri)}") from exc
    except requests.exceptions.RequestException as exc:
        raise PredictdError(f"HTTP request failed {action} {display_uri(uri)}: {type(exc).__name__}") from exc


#: A GET of a resource's first byte only, uncompressed (its Content-Range gives the size).
_FIRST_BYTE = {"Range": "bytes=0-0", "Accept-Encoding": "identity"}


def _http_probe(uri: str) -> tuple[int | None, str | None] | None:
    """Size and validator of a URL, or None if it does not exist.

    Uses a one-byte ranged GET rather than HEAD: pre-signed S3 URLs (where the ENCODE portal
    redirects) are signed for GET only and refuse HEAD.
    """
    import requests

    with _http_errors(uri, "reading"), requests.get(
        uri, headers=_FIRST_BYTE, stream=True, timeout=HTTP_TIMEOUT
    ) as resp:
        if resp.status_code in (404, 410):
            return None
        if resp.status_code == 416:  # a zero-byte resource has no byte 0
            return 0, _http_validator(resp)
        if resp.status_code >= 400:
            raise _http_error(uri, resp.status_code, "reading")
        size = None
        if resp.status_code == 206:
            m = re.match(r"bytes \d+-\d+/(\d+)", resp.headers.get("Content-Range", ""))
            size = int(m.group(1)) if m else None
        elif resp.headers.get("Content-Length", "").isdigit() and "Content-Encoding" not in resp.headers:
            size = int(resp.headers["Content-Length"])
        return size, _http_validator(resp)


def anonymous_read(url: str) -> tuple[bool | None, str]:
    """Whether anyone can read ``url`` as a genome browser does: a one-byte GET without
    credentials. ``(True, "")``; ``(False, "HTTP 403")`` when the server refuses (or has no
    such object); ``(None, why)`` when it cannot tell (no route, DNS, timeout, a server
    error)."""
    import requests

    # an explicit no-op auth: without one requests would send ~/.netrc's credentials for the host
    def anonymous(request):
        return request

    try:
        with requests.get(url, headers=_FIRST_BYTE,
                          auth=anonymous, stream=True, timeout=HTTP_TIMEOUT) as resp:
            code = resp.status_code
    except requests.exceptions.RequestException as exc:
        return None, type(exc).__name__
    if code < 400 or code == 416:  # 416: an empty file has no byte 0
        return True, ""
    return (False if code in (401, 403, 404, 410) else None), f"HTTP {code}"


def _http_validator(resp) -> str | None:
    """A strong validator usable in If-Range (weak ETags are not allowed there)."""
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.headers.get("Last-Modified")


# --- generic reads and writes -------------------------------------------------------------------


def exists(uri: str | os.PathLike) -> bool:
    """Whether a file/object exists. An S3 or Azure URI ending in ``/`` asks whether the prefix
    is non-empty."""
    scheme, location = parse_uri(uri)
    if scheme == "file":
        return os.path.exists(location)
    if scheme == "s3":
        bucket, key = _s3_bucket_key(uri, need_key=False)
        if not key or key.endswith("/"):
            with _s3_errors(uri, "listing"):
                resp = s3_client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
            return resp.get("KeyCount", 0) > 0
        return _s3_head(uri) is not None
    if scheme == "az":
        *_, path = azure_blob(uri)
        if not path or path.endswith("/"):
            with _az_errors(uri, "listing"):
                blobs = _az_container_client(uri).list_blobs(name_starts_with=path or None,
                                                             results_per_page=1)
                return next(iter(blobs), None) is not None
        return _az_head(uri) is not None
    if scheme == "gs":
        bucket, key = _gcs_bucket_key(uri, need_key=False)
        if not key or key.endswith("/"):
            with _gcs_errors(uri, "listing"):
                found = gcs_client().list_blobs(bucket, prefix=key or None, max_results=1)
                return next(iter(found), None) is not None
        return _gcs_head(uri) is not None
    return _http_probe(uri) is not None


def read_bytes(uri: str | os.PathLike) -> bytes:
    """The whole content of a file, object or URL (use for small files: manifests, JSON, TOML)."""
    scheme, location = parse_uri(uri)
    if scheme == "file":
        with _local_errors(location, "reading"), open(location, "rb") as fh:
            return fh.read()
    if scheme == "s3":
        bucket, key = _s3_bucket_key(uri)
        with _s3_errors(uri, "reading"):
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    if scheme == "az":
        with _az_errors(uri, "reading"):
            return _az_blob_client(uri).download_blob().readall()
    if scheme == "gs":
        return _gcs_get(os.fspath(uri), 0, None, None)
    import requests

    with _http_errors(uri, "reading"):
        resp = requests.get(uri, timeout=HTTP_TIMEOUT)
    if resp.status_code >= 400:
        raise _http_error(uri, resp.status_code, "reading")
    return resp.content


class _RangeReader(io.RawIOBase):
    """A seekable, read-only view of one stored object that fetches only the byte ranges read.

    For formats read in pieces (a Parquet tensor block: its footer, then the column chunks
    asked for) this downloads a fraction of the object. Every request is pinned to the ETag
    seen when opening, so an object replaced mid-read is an error, not a mix of two versions.
    Subclasses set ``uri``, ``size`` and ``_etag`` and implement ``_get(start, n)``.
    """

    def __init__(self):
        super().__init__()
        self._pos = 0
        self.requests = 0   # range GETs made, and the bytes they returned
        self.fetched = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buf) -> int:
        n = min(len(buf), self.size - self._pos)
        if n <= 0:
            return 0
        body = self._get(self._pos, n)
        self.requests += 1
        self.fetched += len(body)
        if len(body) != n:
            raise PredictdError(f"the store returned {len(body)} bytes for a {n}-byte range of "
                                f"{display_uri(self.uri)}")
        memoryview(buf)[:n] = body
        self._pos += n
        return n


class S3RangeReader(_RangeReader):
    """A :class:`_RangeReader` over an S3 object (ranged GETs with ``If-Match``)."""

    def __init__(self, uri: str):
        super().__init__()
        head = _s3_head(uri)
        if head is None:
            raise PredictdError(f"S3 object not found: {uri}")
        self.uri = uri
        self._bucket, self._key = _s3_bucket_key(uri)
        self._etag = head.get("ETag")
        self.size = int(head["ContentLength"])

    def _get(self, start: int, n: int) -> bytes:
        extra = {"IfMatch": self._etag} if self._etag else {}
        with _s3_errors(self.uri, "reading"):
            return s3_client().get_object(
                Bucket=self._bucket, Key=self._key,
                Range=f"bytes={start}-{start + n - 1}", **extra)["Body"].read()


class AzureRangeReader(_RangeReader):
    """A :class:`_RangeReader` over an Azure blob (ranged GETs with ``If-Match``)."""

    def __init__(self, uri: str):
        super().__init__()
        props = _az_head(uri)
        if props is None:
            raise PredictdError(f"Azure blob not found: {display_uri(uri)}")
        self.uri = uri
        self._blob = _az_blob_client(uri)
        self._etag = props.etag
        self.size = int(props.size)

    def _get(self, start: int, n: int) -> bytes:
        from azure.core import MatchConditions

        with _az_errors(self.uri, "reading"):
            return self._blob.download_blob(
                offset=start, length=n, etag=self._etag,
                match_condition=MatchConditions.IfNotModified, max_concurrency=1).readall()


class GcsRangeReader(_RangeReader):
    """A :class:`_RangeReader` over a GCS object (ranged GETs of the generation seen at open)."""

    def __init__(self, uri: str):
        super().__init__()
        blob = _gcs_head(uri)
        if blob is None:
            raise PredictdError(f"GCS object not found: {uri}")
        self.uri = uri
        self._etag = blob.generation
        self.size = int(blob.size)

    def _get(self, start: int, n: int) -> bytes:
        return _gcs_get(self.uri, start, start + n - 1, self._etag)


@contextlib.contextmanager
def open_random_access(uri: str | os.PathLike):
    """A seekable binary file over a file, object or URL, for formats read in pieces (a Parquet
    tensor block: its footer, then the column chunks asked for): a local file memory-mapped, an
    S3 object or Azure blob through ranged GETs (:class:`S3RangeReader`,
    :class:`AzureRangeReader`), a URL read whole."""
    scheme, location = parse_uri(uri)
    if scheme == "file":
        import pyarrow as pa

        with _local_errors(location, "reading"):
            fh = pa.memory_map(location, "r")
    elif scheme == "s3":
        fh = S3RangeReader(os.fspath(uri))
    elif scheme == "az":
        fh = AzureRangeReader(os.fspath(uri))
    elif scheme == "gs":
        fh = GcsRangeReader(os.fspath(uri))
    else:
        fh = io.BytesIO(read_bytes(uri))
    with fh:
        yield fh


def read_text(uri: str | os.PathLike, encoding: str = "utf-8") -> str:
    """:func:`read_bytes` decoded as text."""
    data = read_bytes(uri)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise PredictdError(f"not {encoding} text: {display_uri(os.fspath(uri))} (byte {exc.start})") from exc


def write_bytes_atomic(uri: str | os.PathLike, data: bytes, public: bool = False) -> None:
    """Write ``data`` so that readers see either the old content or all of the new.

    Parameters
    ----------
    uri : str or os.PathLike
        Local path (parents created), ``s3://`` or Azure URI.
    data : bytes
        The content.
    public : bool, default False
        S3: grant public read (``public-read`` ACL); Azure: open the container to anonymous
        reads of its blobs. Objects are private otherwise.
    """
    scheme, location = parse_uri(uri)
    if scheme == "file":
        _atomic_local_write(location, lambda fh: fh.write(data))
    elif scheme == "s3":
        bucket, key = _s3_bucket_key(uri)
        with _s3_errors(uri, "writing"):
            s3_client().put_object(Bucket=bucket, Key=key, Body=data, **_s3_extra_args(public))
    elif scheme == "az":
        _az_put(os.fspath(uri), data, public)
    elif scheme == "gs":
        _gcs_upload(None, os.fspath(uri), data, public)
    else:
        raise PredictdError(f"cannot write to an {scheme} URL: {display_uri(os.fspath(uri))}")


def write_text_atomic(uri: str | os.PathLike, text: str, public: bool = False, encoding: str = "utf-8") -> None:
    """:func:`write_bytes_atomic` for text."""
    write_bytes_atomic(uri, text.encode(encoding), public=public)


def make_public(uri: str | os.PathLike) -> None:
    """Let anyone read an existing object, as ``public=True`` does for a new one: S3's
    ``public-read`` ACL, GCS's ``publicRead``; on Azure its container is opened to anonymous
    blob reads. Local files are left as they are."""
    scheme, location = parse_uri(uri)
    if scheme == "s3":
        bucket, _, key = location.partition("/")
        with _s3_errors(os.fspath(uri), "making public"):
            s3_client().put_object_acl(Bucket=bucket, Key=key, ACL="public-read")
    elif scheme == "az":
        _az_make_public(os.fspath(uri))
    elif scheme == "gs":
        bucket, key = _gcs_bucket_key(os.fspath(uri))
        with _gcs_errors(os.fspath(uri), "making public"):
            gcs_client().bucket(bucket).blob(key).make_public()


def upload_file(local_path: str | os.PathLike, uri: str | os.PathLike, public: bool = False) -> None:
    """Copy a local file to a local path, S3 or Azure, atomically.

    Files over :data:`MULTIPART_THRESHOLD` go to S3 as a multipart upload (parts sent in
    parallel); on any failure, interrupts included, the upload is aborted so that no object and
    no billable pending parts remain. To Azure they go as staged blocks committed by one
    block-list commit once all are in.

    Parameters
    ----------
    local_path : str or os.PathLike
        Source file.
    uri : str or os.PathLike
        Destination: local path, ``s3://bucket/key`` or Azure URI.
    public : bool, default False
        Grant public read (see :func:`write_bytes_atomic`).
    """
    src = os.fspath(local_path)
    check_readable(src)
    scheme, location = parse_uri(uri)
    if scheme == "file":
        if os.path.exists(location) and os.path.samefile(src, location):
            return
        with _local_errors(src, "reading"), open(src, "rb") as fin:
            _atomic_local_write(location, lambda fout: shutil.copyfileobj(fin, fout, _CHUNK))
        return
    if scheme == "az":
        size = os.path.getsize(src)
        if size > MULTIPART_THRESHOLD:
            _az_block_upload(src, os.fspath(uri), size, public)
        else:
            with _local_errors(src, "reading"), open(src, "rb") as fh:
                data = fh.read()
            _az_put(os.fspath(uri), data, public)
        return
    if scheme == "gs":
        _gcs_upload(src, os.fspath(uri), None, public)
        return
    if scheme != "s3":
        raise PredictdError(f"cannot upload to an {scheme} URL: {display_uri(os.fspath(uri))}")
    size = os.path.getsize(src)
    if size > MULTIPART_THRESHOLD:
        _s3_multipart_upload(src, os.fspath(uri), size, public)
        return
    bucket, key = _s3_bucket_key(uri)
    with _local_errors(src, "reading"), open(src, "rb") as fh, _s3_errors(os.fspath(uri), "uploading to"):
        s3_client().put_object(Bucket=bucket, Key=key, Body=fh, **_s3_extra_args(public))


@contextlib.contextmanager
def staged(uri: str | os.PathLike, public: bool = False, last=(), in_place: bool = False):
    """A local directory to build files in, published into the directory or object-store prefix ``uri``
    when the ``with`` block succeeds; if it raises, nothing more is published.

    Each file is published atomically (a rename, or a complete upload to S3), in name order
    with the names in ``last`` at the end, so a reader that finds a ``last`` file finds every
    other one complete. Locally the files are built in a hidden ``.tmp-*`` directory inside
    ``uri`` (the same filesystem, so renames are atomic; a killed run's is swept on resume);
    for S3 and Azure in a temporary directory of this machine. Only the directory's files are published,
    not subdirectories.

    Parameters
    ----------
    uri : str or os.PathLike
        Destination directory: local path, ``s3://`` or Azure prefix.
    public : bool, default False
        Grant public read (see :func:`write_bytes_atomic`).
    last : collection of str
        File names published after all the others.
    in_place : bool, default False
        For a local ``uri``, yield ``uri`` itself: for writers that publish each file
        atomically themselves (:meth:`predictd.model.Model.save`,
        :class:`predictd.bigwig.BigWigWriter`), so a file is in place as soon as it is
        complete and a resume finds it. Only remote destinations are staged then.

    Examples
    --------
    >>> import tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "report")
    >>> with staged(out, last=("index.html",)) as d:
    ...     for name in ("index.html", "metrics.tsv"):
    ...         _ = open(os.path.join(d, name), "w").write(name)
    ...     print(os.listdir(out) == [os.path.basename(d)])
    True
    >>> sorted(os.listdir(out))
    ['index.html', 'metrics.tsv']
    """
    scheme, location = parse_uri(uri)
    if scheme == "file" and in_place:
        yield location
        return
    if scheme == "file":
        with _local_errors(location, "writing"):
            os.makedirs(location, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=".tmp-", dir=location)
    elif scheme in OBJECT_STORES:
        tmp = tempfile.mkdtemp(prefix="predictd-staged-")
    else:
        raise PredictdError(f"cannot write to an {scheme} URL: {display_uri(os.fspath(uri))}")
    try:
        yield tmp
        names = [n for n in os.listdir(tmp) if os.path.isfile(os.path.join(tmp, n))]
        for name in sorted(names, key=lambda n: (n in last, n)):
            if scheme == "file":
                with _local_errors(os.path.join(location, name), "writing"):
                    os.replace(os.path.join(tmp, name), os.path.join(location, name))
            else:
                upload_file(os.path.join(tmp, name), join(uri, name), public=public)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def list_prefix(uri: str | os.PathLike) -> list[tuple[str, int]]:
    """Files under a directory, S3 or Azure prefix, as ``(relative key, size in bytes)``, sorted.

    An S3 or Azure prefix is treated as a folder (``s3://b/out`` lists ``out/...``, not ``outside``).
    A missing directory or prefix lists as empty.
    """
    scheme, location = parse_uri(uri)
    if scheme == "file":
        if not os.path.isdir(location):
            return []
        found = []
        with _local_errors(location, "listing"):
            for root, _, files in os.walk(location):
                for name in files:
                    full = os.path.join(root, name)
                    rel = os.path.relpath(full, location).replace(os.sep, "/")
                    found.append((rel, os.path.getsize(full)))
        return sorted(found)
    if scheme == "az":
        return sorted(_az_list(os.fspath(uri)))
    if scheme == "gs":
        return sorted(_gcs_list(os.fspath(uri)))
    if scheme != "s3":
        raise PredictdError(f"cannot list an {scheme} URL: {display_uri(os.fspath(uri))}")
    bucket, prefix = _s3_bucket_key(uri, need_key=False)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    found = []
    with _s3_errors(os.fspath(uri), "listing"):
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.extend((obj["Key"][len(prefix):], obj["Size"]) for obj in page.get("Contents", []))
    return sorted(found)


def delete_prefix(uri: str | os.PathLike) -> None:
    """Delete a directory tree or every object under an S3 or Azure prefix (and S3's pending
    uploads).

    Refuses a whole bucket or container or the filesystem root, to keep a typo from wiping them.
    """
    scheme, location = parse_uri(uri)
    if scheme == "file":
        if os.path.abspath(location) in ("/", os.path.expanduser("~")) or not location:
            raise PredictdError(f"refusing to delete {location!r}")
        if not os.path.lexists(location):
            return
        with _local_errors(location, "deleting"):
            if os.path.isdir(location) and not os.path.islink(location):
                shutil.rmtree(location)
            else:
                os.remove(location)
        return
    if scheme == "az":
        uri = os.fspath(uri)
        *_, prefix = azure_blob(uri)
        if not prefix.strip("/"):
            raise PredictdError(f"refusing to delete a whole container: {display_uri(uri)}")
        container = _az_container_client(uri)
        for name, _ in _az_list(uri):
            key = prefix.rstrip("/") + "/" + name
            with _az_errors(join(uri, name), "deleting"):
                container.delete_blob(key)
        return
    if scheme == "gs":
        uri = os.fspath(uri)
        bucket, prefix = _gcs_bucket_key(uri, need_key=False)
        if not prefix.strip("/"):
            raise PredictdError(f"refusing to delete a whole bucket: {uri}")
        handle = gcs_client().bucket(bucket)
        for name, _ in _gcs_list(uri):
            with _gcs_errors(join(uri, name), "deleting"):
                handle.blob(prefix.rstrip("/") + "/" + name).delete()
        return
    if scheme != "s3":
        raise PredictdError(f"cannot delete an {scheme} URL: {display_uri(os.fspath(uri))}")
    bucket, prefix = _s3_bucket_key(uri, need_key=False)
    if not prefix.strip("/"):
        raise PredictdError(f"refusing to delete a whole bucket: {uri}")
    if not prefix.endswith("/"):
        prefix += "/"
    client = s3_client()
    with _s3_errors(os.fspath(uri), "deleting"):
        keys = [
            obj["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
        ]
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            resp = client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True}
            )
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise PredictdError(
                    f"could not delete s3://{bucket}/{first.get('Key')}: {first.get('Code')} "
                    f"({len(resp['Errors'])} objects not deleted)"
                )
    abort_pending_uploads(uri)


def abort_pending_uploads(uri: str | os.PathLike) -> int:
    """Abort the unfinished S3 multipart uploads under a prefix (a killed writer's leftovers:
    they are invisible as objects but are billed). Returns how many; 0 for local paths and
    Azure, whose uncommitted blocks the service discards itself."""
    scheme, _ = parse_uri(uri)
    if scheme != "s3":
        # Azure discards uncommitted blocks itself (at the blob's next commit, or in a week);
        # an unfinished GCS resumable upload expires after a week and is never an object.
        return 0
    bucket, prefix = _s3_bucket_key(os.fspath(uri), need_key=False)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    client = s3_client()
    n = 0
    with _s3_errors(os.fspath(uri), "cleaning up uploads under"):
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket,
                                                                           Prefix=prefix):
            for up in page.get("Uploads", []):
                client.abort_multipart_upload(Bucket=bucket, Key=up["Key"],
                                              UploadId=up["UploadId"])
                n += 1
    return n


# --- downloads -------------------------------------------------------------------------------


def fetch_to_local(
    uri: str | os.PathLike,
    scratch_dir: str | os.PathLike,
    md5: str | None = None,
    progress: bool = False,
) -> str:
    """A local path holding the content of ``uri``, downloading into ``scratch_dir`` if needed.

    Parameters
    ----------
    uri : str or os.PathLike
        Local path, ``file://``, ``http(s)://``, ``s3://`` or Azure URI.
    scratch_dir : str or os.PathLike
        Cache directory for remote files (created if missing). Files are named
        ``<12 hex of sha1(uri)>-<basename>`` so different URIs with the same basename never
        collide, and a second call finds the first call's file.
    md5 : str, optional
        Expected hex MD5; checked for local files too.
    progress : bool, default False
        Show a tqdm progress bar on stderr while downloading.

    Returns
    -------
    str
        Local path: ``uri`` itself for local files, else the cached download.

    Raises
    ------
    PredictdError
        Missing/unreadable file or object, network failure, or ``md5 mismatch for <uri>: ...``.
    """
    scheme, location = parse_uri(uri)
    if scheme == "file":
        check_readable(location)
        if md5:
            _verify_md5(location, md5, os.fspath(uri))
        return location
    uri = os.fspath(uri)
    name = os.path.basename(unquote(urlsplit(uri).path)) or "download"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[-120:]
    digest = hashlib.sha1(uri.encode(), usedforsecurity=False).hexdigest()[:12]
    target = os.path.join(os.fspath(scratch_dir), f"{digest}-{name}")
    return download_file(uri, target, progress=progress, md5=md5)


def download_file(
    uri: str | os.PathLike,
    local_path: str | os.PathLike,
    progress: bool = False,
    md5: str | None = None,
) -> str:
    """Download ``uri`` to ``local_path``, resuming a partial download and skipping a complete one.

    Bytes go to ``local_path + ".part"`` (with a small ``.part.json`` noting the remote version,
    so a part of an older version is never continued) and are renamed into place once complete
    and verified. A dropped connection is retried, resuming, up to :data:`DOWNLOAD_ATTEMPTS`
    times. Concurrent calls for the same ``local_path`` (e.g. two tasks on one node) wait for
    each other through a lock file.

    Parameters
    ----------
    uri : str or os.PathLike
        Source: local path, ``file://``, ``http(s)://``, ``s3://`` or Azure URI.
    local_path : str or os.PathLike
        Destination file; parent directories are created.
    progress : bool, default False
        Show a tqdm progress bar on stderr.
    md5 : str, optional
        Expected hex MD5 of the content; an existing ``local_path`` with this MD5 is kept. An
        Azure blob's stored ``Content-MD5`` or a GCS object's ``md5Hash`` is checked when no
        ``md5`` is given.

    Returns
    -------
    str
        ``local_path``.
    """
    uri = os.fspath(uri)
    local_path = os.fspath(local_path)
    scheme, location = parse_uri(uri)
    if scheme == "file":
        check_readable(location)
        if md5:
            _verify_md5(location, md5, uri)
        if os.path.exists(local_path) and (
            os.path.samefile(location, local_path)
            or (os.path.getsize(local_path) == os.path.getsize(location)
                and (md5 is None or file_md5(local_path) == md5.lower()))
        ):
            return local_path
        upload_file(location, local_path)
        return local_path
    directory = os.path.dirname(os.path.abspath(local_path))
    with _local_errors(local_path, "writing"):
        os.makedirs(directory, exist_ok=True)
    with _file_lock(local_path + ".lock"):
        _download_locked(uri, scheme, local_path, progress, md5.lower() if md5 else None)
    return local_path


@contextlib.contextmanager
def _file_lock(path: str):
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock, downloads still work one at a time
        yield
        return
    with _local_errors(path, "writing"):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _remote_info(uri: str, scheme: str) -> tuple[int | None, str | None, str | None]:
    """Size, version (ETag or validator) and the MD5 the store vouches for, where it keeps one."""
    if scheme == "s3":
        head = _s3_head(uri)
        if head is None:
            raise PredictdError(f"S3 object not found: {uri}")
        return int(head["ContentLength"]), head.get("ETag"), None
    if scheme == "az":
        props = _az_head(uri)
        if props is None:
            raise PredictdError(f"Azure blob not found: {display_uri(uri)}")
        return int(props.size), props.etag, _az_stored_md5(props)
    if scheme == "gs":
        blob = _gcs_head(uri)
        if blob is None:
            raise PredictdError(f"GCS object not found: {uri}")
        return int(blob.size), str(blob.generation), _gcs_stored_md5(blob)
    info = _http_probe(uri)
    if info is None:
        raise PredictdError(f"not found (HTTP 404): {display_uri(uri)}")
    return (*info, None)


def _download_locked(uri: str, scheme: str, local_path: str, progress: bool, md5: str | None) -> None:
    size, version, stored_md5 = _remote_info(uri, scheme)
    md5 = md5 or stored_md5
    if os.path.exists(local_path):
        if md5 is not None:
            if file_md5(local_path) == md5:
                return
        elif size is not None and os.path.getsize(local_path) == size:
            return
        logger.info("%s differs from %s; downloading again", local_path, display_uri(uri))

    part, meta = local_path + ".part", local_path + ".part.json"
    offset = 0
    if os.path.exists(part):
        offset = os.path.getsize(part)
        try:
            with open(meta) as fh:
                same_version = json.load(fh) == {"uri": uri, "size": size, "version": version}
        except (OSError, ValueError):
            same_version = False
        if not same_version or version is None or (size is not None and offset > size):
            offset = 0  # a part of another version (or of unknown version) cannot be continued
    if offset == 0:
        stamp = json.dumps({"uri": uri, "size": size, "version": version}).encode()
        _atomic_local_write(meta, lambda fh: fh.write(stamp))
        with _local_errors(part, "writing"):
            open(part, "wb").close()

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=size, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=os.path.basename(local_path), leave=False)
    try:
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            offset = os.path.getsize(part)
            if size is not None and offset >= size:
                break
            try:
                if scheme == "s3":
                    _s3_fetch_range(uri, part, offset, version, bar)
                elif scheme == "az":
                    _az_fetch_range(uri, part, offset, version, bar)
                elif scheme == "gs":
                    _gcs_fetch_range(uri, part, offset, version, bar, size)
                else:
                    _http_fetch_range(uri, part, offset, version, bar)
                if size is None or os.path.getsize(part) >= size:
                    break
            except _Retryable as exc:
                if attempt == DOWNLOAD_ATTEMPTS:
                    raise PredictdError(
                        f"download of {display_uri(uri)} kept failing after {attempt} attempts: {exc}"
                    ) from exc
                logger.warning("download of %s interrupted (%s); resuming", display_uri(uri), exc)
                time.sleep(min(2 ** attempt * 0.25, 10))
    finally:
        if bar is not None:
            bar.close()

    got = os.path.getsize(part)
    if size is not None and got != size:
        raise PredictdError(f"incomplete download of {display_uri(uri)}: got {got} of {size} bytes")
    if md5 is not None:
        actual = file_md5(part)
        if actual != md5:
            for path in (part, meta):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            raise PredictdError(f"md5 mismatch for {display_uri(uri)}: expected {md5}, got {actual}")
    with _local_errors(local_path, "writing"):
        with open(part, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(part, local_path)
        with contextlib.suppress(FileNotFoundError):
            os.remove(meta)


class _Retryable(Exception):
    """A transfer that broke off midway and may be resumed."""


class _RestartFromZero(_Retryable):
    """The server sent the whole file instead of the requested range."""


def _append_stream(chunks, part: str, bar) -> None:
    """Append ``chunks`` to ``part``; network errors from ``chunks`` propagate unchanged."""
    with _local_errors(part, "writing"):
        fh = open(part, "ab")
    with fh:
        for chunk in chunks:
            if chunk:
                with _local_errors(part, "writing"):
                    fh.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))


def _http_fetch_range(uri: str, part: str, offset: int, version: str | None, bar) -> None:
    import requests

    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if version:
            headers["If-Range"] = version  # the whole file comes back if it changed meanwhile
    try:
        with _http_errors(uri, "downloading"):
            resp = requests.get(uri, headers=headers, stream=True, timeout=HTTP_TIMEOUT)
    except PredictdError as exc:
        raise _Retryable(str(exc)) from exc
    with resp:
        if resp.status_code >= 400 and resp.status_code != 416:
            raise _http_error(uri, resp.status_code, "downloading")
        if resp.status_code == 416 or (offset and resp.status_code == 200):
            # Range refused or ignored: start over rather than appending the whole file again.
            with _local_errors(part, "writing"):
                open(part, "wb").close()
            if bar is not None:
                bar.reset()
            if resp.status_code == 416:
                raise _RestartFromZero("server refused the byte range")
        try:
            _append_stream(resp.iter_content(_CHUNK), part, bar)
        except requests.exceptions.RequestException as exc:
            raise _Retryable(type(exc).__name__) from exc


def _s3_fetch_range(uri: str, part: str, offset: int, version: str | None, bar) -> None:
    from botocore.exceptions import BotoCoreError, ClientError
    from urllib3.exceptions import HTTPError as Urllib3Error

    bucket, key = _s3_bucket_key(uri)
    kwargs = {"Bucket": bucket, "Key": key}
    if offset:
        kwargs["Range"] = f"bytes={offset}-"
    if version:
        kwargs["IfMatch"] = version  # fail rather than splice two versions of the object
    with _s3_errors(uri, "downloading"):
        try:
            body = s3_client().get_object(**kwargs)["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
                raise PredictdError(f"S3 object changed while downloading {uri}; run again") from exc
            raise
    try:
        _append_stream(body.iter_chunks(_CHUNK), part, bar)
    except (BotoCoreError, Urllib3Error, ConnectionError) as exc:
        raise _Retryable(type(exc).__name__) from exc
    finally:
        body.close()


def _verify_md5(path: str, expected: str, uri: str) -> None:
    actual = file_md5(path)
    if actual != expected.lower():
        raise PredictdError(f"md5 mismatch for {display_uri(uri)}: expected {expected.lower()}, got {actual}")
