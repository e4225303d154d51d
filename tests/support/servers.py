"""Starting a storage server (Azurite, fake-gcs-server) as a child process on 127.0.0.1 with a
throw-away workspace, waiting until it answers, and stopping it again."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Callable

from predictd.localcluster import free_port


def listening(port: int) -> bool:
    """Whether something accepts connections on ``port`` of 127.0.0.1."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def launch(name: str, argv: Callable[[int, str], list[str]], ready: Callable[[int], bool],
           timeout: float, env: dict[str, str] | None = None
           ) -> tuple[int, str, Callable[[], None]]:
    """Run ``argv(port, workspace)`` on a free port with a new workspace directory (its output
    goes to ``workspace/server.log``; ``env``: variables added to this process's environment)
    and wait until ``ready(port)``.

    Returns
    -------
    (int, str, callable)
        The port, the workspace, and a function that stops the server and removes the
        workspace.

    Raises
    ------
    RuntimeError
        If the server exits (with the end of its log) or is not ready within ``timeout`` s.
    """
    port = free_port()
    workspace = tempfile.mkdtemp(prefix=f"predictd-{name}-")
    log_path = os.path.join(workspace, "server.log")
    log = open(log_path, "wb")
    proc = subprocess.Popen(argv(port, workspace), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(workspace, ignore_errors=True)

    deadline = time.monotonic() + timeout
    while not ready(port):
        if proc.poll() is not None:
            log.flush()
            with open(log_path, errors="replace") as fh:
                tail = fh.read()[-2000:]
            stop()
            raise RuntimeError(f"{name} exited with {proc.returncode}: {tail}")
        if time.monotonic() > deadline:
            stop()
            raise RuntimeError(f"{name} did not answer on port {port} in {timeout:.0f} s")
        time.sleep(0.1)
    return port, workspace, stop
