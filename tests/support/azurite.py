"""A real Azure Blob endpoint for tests: Azurite (the npm package ``azurite``) on 127.0.0.1.

Tests reach it through the fixtures of ``tests/conftest.py``: ``azurite_server`` (one server
for the session, its connection string) and ``azure_endpoint`` (a test's own container, with
``AZURE_STORAGE_*`` variables pointing predictd at the server). Azurite serves Azure's
well-known development account ``devstoreaccount1``; its key is public, so no real Azure
account can ever be touched.
"""

from __future__ import annotations

import os
import shutil
from typing import Callable

from tests.support.servers import launch, listening

ACCOUNT = "devstoreaccount1"
#: Azurite's published development key (documented by Microsoft; not a secret of anyone's).
ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")
#: Every ``AZURE_*`` variable predictd's credential chain looks at.
AZURE_ENV = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY",
             "AZURE_STORAGE_BLOB_ENDPOINT",
             "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET")


def find_azurite() -> str | None:
    """The ``azurite-blob`` executable (``$PREDICTD_AZURITE`` or on PATH), or None."""
    return os.environ.get("PREDICTD_AZURITE") or shutil.which("azurite-blob")


def connection_string(port: int, key: str = ACCOUNT_KEY) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};")


def start_azurite(executable: str, timeout: float = 60.0) -> tuple[str, int, Callable[[], None]]:
    """Start ``azurite-blob`` on a free port of 127.0.0.1 with a throw-away workspace.

    Returns
    -------
    (str, int, callable)
        The connection string, the port, and a function that stops the server and removes its
        workspace.
    """
    def argv(port: int, workspace: str) -> list[str]:
        return [executable, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
                workspace, "--silent", "--skipApiVersionCheck", "--disableTelemetry", "--loose"]

    port, _, stop = launch("azurite-blob", argv, listening, timeout)
    return connection_string(port), port, stop


def use_azurite(monkeypatch, conn: str) -> None:
    """Point predictd at Azurite through ``AZURE_STORAGE_CONNECTION_STRING`` alone, ignoring
    any other Azure configuration of the machine."""
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
