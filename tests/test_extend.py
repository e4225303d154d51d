"""Reference imputation (`predictd extend`, predictd.extend): new cell types fitted against a
finished run that is only read."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from predictd import storage
from predictd.cli import extend as _extend_cmd, stages as _stage_cmds  # noqa: F401 - registers
from predictd.cli.main import cli
from predictd.solvers.reference import cell_type_sums, solve_cell_type, sum_cell_type_sums

SMALL = ("--set", "latent_factors=3", "--set", "max_iterations=4", "--set",
         "training_fraction=0.3", "--set", "block_bins=1024", "--set", "partitions=2")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def checksums(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- the numpy core
def test_solve_cell_type_recovers_a_known_cell_type_factor():
    rng = np.random.default_rng(3)
    L, n, n_assay = 4, 5_000, 6
    G = rng.normal(size=(n, L))
    bG = rng.normal(size=n)
    A = rng.normal(size=(n_assay, L))
    bA = rng.normal(size=n_assay)
    mu, c, b = 0.7, rng.normal(size=L), -0.4
    assays = np.array([0, 2, 3, 5])
    X = mu + b + bA[assays][None, :] + bG[:, None] + (G * c) @ A[assays].T
    X[rng.random(X.shape) < 0.2] = np.nan  # missing entries are left out, not zeros
    GB = np.column_stack([G, bG])
    # two blocks summed give the one-block answer
    parts = [cell_type_sums(GB[s], X[s], A, bA, mu, assays)
             for s in (slice(0, 2_000), slice(2_000, n))]
    sums = sum_cell_type_sums(parts)
    assert sums["n"] == int((~np.isnan(X)).sum())
    got_c, got_b = solve_cell_type(sums, lam_c=0.0)
    np.testing.assert_allclose(got_c, c, atol=1e-8)
    assert got_b == pytest.approx(b, abs=1e-8)
    # a penalty shrinks the factor
    shrunk, _ = solve_cell_type(sums, lam_c=10.0)
    assert np.linalg.norm(shrunk) < np.linalg.norm(c)


# --------------------------------------------------------------------------- a reference
@pytest.fixture(scope="module")
def reference(tmp_path_factory, write_small_run_inputs):
    """A finished run on cell types A and B, and NEW manifests: D (C's tracks under another
    name) with x observed, and with x and y."""
    d = tmp_path_factory.mktemp("extend")
    inp = write_small_run_inputs(d / "in")
    lines = Path(inp.manifest).read_text().splitlines()
    head = lines[0]
    (d / "in" / "ref.tsv").write_text("\n".join(
        [head] + [x for x in lines[1:] if x.split("\t")[0] in "AB"]) + "\n")
    (d / "in" / "new.tsv").write_text(f"{head}\nD\tx\tC.x.bw\n")
    (d / "in" / "new_xy.tsv").write_text(f"{head}\nD\tx\tC.x.bw\nD\ty\tC.y.bw\n")
    r = invoke("run", "-m", d / "in" / "ref.tsv", "-g", inp.sizes, "-o", d / "ref",
               "--no-spark", *SMALL)
    assert r.exit_code == 0, r.output + r.stderr
    return {"dir": d, "ref": d / "ref", "new": d / "in" / "new.tsv",
            "new_xy": d / "in" / "new_xy.tsv", "sizes": inp.sizes, "in": d / "in"}


def extend(reference, out, *extra, manifest=None):
    return invoke("extend", "-r", reference["ref"], "-m", manifest or reference["new"], "-o",
                  out, "--no-spark", *extra)


def test_extend_writes_the_missing_tracks_and_never_touches_the_reference(reference, tmp_path,
                                                                         monkeypatch):
    ref = reference["ref"]
    before = checksums(ref)
    # every write predictd makes goes through these: none may target the reference
    targets = []
    for name in ("write_bytes_atomic", "write_text_atomic", "staged", "delete_prefix"):
        real = getattr(storage, name)

        def spy(uri, *a, _real=real, **k):
            targets.append(str(uri))
            return _real(uri, *a, **k)
        monkeypatch.setattr(storage, name, spy)
    for p in [ref, *ref.rglob("*")]:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    try:
        r = extend(reference, tmp_path / "out")
    finally:
        for p in [ref, *ref.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
    assert r.exit_code == 0, r.output + r.stderr
    assert checksums(ref) == before
    assert targets and not [t for t in targets if t.startswith(str(ref))]
    tracks = sorted(p.name for p in (tmp_path / "out" / "tracks").iterdir())
    assert tracks == ["D.y.imputed.bw"]  # D.x is observed
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    assert doc["reference"]["uri"] == str(ref)
    model_json = (ref / "model" / "model.json").read_bytes()
    assert doc["reference"]["model_sha256"] == hashlib.sha256(model_json).hexdigest()
    assert doc["config"]["latent_factors"] == 3 and doc["stages"]["fit"]["seconds"] >= 0
    idx = json.loads((tmp_path / "out" / "tracks.json").read_text())
    assert [t["path"] for t in idx["tracks"]] == ["tracks/D.y.imputed.bw"]


def test_extend_is_bit_identical_across_runs_and_resumes(reference, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert extend(reference, a, "--assay", "x", "--assay", "y").exit_code == 0
    assert extend(reference, b, "--assay", "x", "--assay", "y").exit_code == 0
    ta, tb = checksums(a / "tracks"), checksums(b / "tracks")
    assert sorted(ta) == ["D.x.imputed.bw", "D.y.imputed.bw"] and ta == tb
    # resume: a lost track and the impute marker are redone, the same bits
    (a / "tracks" / "D.y.imputed.bw").unlink()
    (a / "_predictd" / "impute.done.json").unlink()
    r = extend(reference, a, "--assay", "x", "--assay", "y")
    assert r.exit_code == 0 and "ingest    skipped" in r.output
    assert checksums(a / "tracks") == tb


@pytest.mark.slow
def test_extend_scores_held_out_tracks(reference, tmp_path):
    r = extend(reference, tmp_path / "o", "--holdout", "D:y", manifest=reference["new_xy"])
    assert r.exit_code == 0, r.output + r.stderr
    assert "D.y" in r.output and "average" in r.output
    rows = (tmp_path / "o" / "report" / "metrics.tsv").read_text().splitlines()
    assert any(x.startswith("D\ty\tmodel") for x in rows)
    assert (tmp_path / "o" / "tracks" / "D.y.imputed.bw").exists()


@pytest.mark.spark
@pytest.mark.slow
def test_extend_under_spark_gives_the_same_bits(reference, tmp_path, spark):
    assert extend(reference, tmp_path / "a").exit_code == 0
    r = invoke("extend", "-r", reference["ref"], "-m", reference["new"], "-o", tmp_path / "b",
               "--master", spark.master)
    assert r.exit_code == 0, r.output + r.stderr
    assert checksums(tmp_path / "a" / "tracks") == checksums(tmp_path / "b" / "tracks")
    ma = np.load(tmp_path / "a" / "model" / "factors.npz")
    mb = np.load(tmp_path / "b" / "model" / "factors.npz")
    assert all(np.array_equal(ma[k], mb[k], equal_nan=True) for k in ma.files)
