"""Shared fixtures: the shared real data, a local Spark context, the S3 server on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.s3server import moto_endpoint, s3_endpoint  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PREDICTD_SHARED", REPO.parent / "shared")) / "data"
CELLS = ["E003", "E017", "E116", "E117"]
MARKS = ["H3K4me3", "H3K4me1", "H3K27me3", "H3K36me3", "H3K9me3"]


def shared_data() -> Path:
    """The shared real data directory, or skip the test with the reason."""
    if not (SHARED / "roadmap_pilot").is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set PREDICTD_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def shared():
    return shared_data()


@pytest.fixture(scope="session")
def roadmap(shared):
    """{experiment: arcsinh float32 array} for the 20 shared Roadmap pilot tracks."""
    out = {}
    for c in CELLS:
        for m in MARKS:
            with np.load(shared / "roadmap_pilot" / f"{c}.{m}.pilot.arcsinh.npz") as z:
                out[f"{c}.{m}"] = z["arr_0"]
    return out


@pytest.fixture(scope="session")
def spark():
    """One local Spark context for the whole session (2 cores)."""
    from predictd.spark import get_context, stop_context
    sc = get_context("local[2]")
    yield sc
    stop_context()
