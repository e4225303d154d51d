"""End-to-end: manifest of real bigWigs → Spark → model → imputed bigWigs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyBigWig
import pytest

from predictd import pipeline
from predictd.bigwig import read_binned
from predictd.config import Config

pytestmark = [pytest.mark.spark, pytest.mark.slow]

LEFT_OUT = "E116.H3K4me3"


@pytest.fixture(scope="module")
def roadmap_run(roadmap, spark, tmp_path_factory, write_roadmap_inputs):
    """`predictd run` on all 1.13 M bins of the shared tracks, one track left out of the
    manifest entirely."""
    d = tmp_path_factory.mktemp("roadmap")
    manifest, sizes = write_roadmap_inputs(roadmap, d / "inputs", leave_out={LEFT_OUT})
    out = str(d / "out")
    run = pipeline.open_run(manifest, sizes, out, Config(), sc=spark, progress=False)
    results = pipeline.run_all(run)
    return out, results


def test_roadmap_run_writes_every_pair(roadmap_run, roadmap, roadmap_cell_types, roadmap_assays):
    out, results = roadmap_run
    n = next(iter(roadmap.values())).size
    for c in roadmap_cell_types:
        for m in roadmap_assays:
            path = os.path.join(out, "tracks", f"{c}.{m}.imputed.bw")
            bw = pyBigWig.open(path)
            assert bw.chroms() == {"pilot": n * 25}
            bw.close()
    assert {"factors.npz", "model.json"} <= set(os.listdir(os.path.join(out, "model")))
    doc = json.load(open(os.path.join(out, "run.json")))
    assert doc["stages"]["impute"]["tracks"] == 20
    assert doc["manifest"]["checksum"] and len(doc["manifest"]["tracks"]) == 19
    assert {"numpy", "pyspark", "pyBigWig"} <= set(doc["versions"])
    # the tensor is plain Parquet with a hive layout; pyarrow reads it as one dataset
    import pyarrow.dataset as ds
    t = ds.dataset(os.path.join(out, "tensor"), format="parquet", partitioning="hive",
                   exclude_invalid_files=True).to_table(columns=["bin", "E003.H3K4me3"])
    assert t.num_rows == n


def test_left_out_track_beats_the_average_baseline(roadmap_run, roadmap, roadmap_cell_types):
    out, _ = roadmap_run
    n = roadmap[LEFT_OUT].size
    imputed = np.arcsinh(read_binned(os.path.join(out, "tracks", f"{LEFT_OUT}.imputed.bw"),
                                     "pilot", n * 25))
    y = roadmap[LEFT_OUT]
    cell, mark = LEFT_OUT.split(".")
    base = np.mean([roadmap[f"{c}.{mark}"] for c in roadmap_cell_types if c != cell], axis=0)
    mse_model = float(np.mean((imputed - y) ** 2))
    mse_base = float(np.mean((base - y) ** 2))
    assert mse_model < mse_base, (mse_model, mse_base)


def test_rerun_resumes_and_changes_nothing(roadmap_run, roadmap, spark):
    out, _ = roadmap_run
    path = os.path.join(out, "tracks", "E003.H3K27me3.imputed.bw")
    before = open(path, "rb").read()
    manifest = os.path.join(os.path.dirname(out), "inputs", "manifest.tsv")
    sizes = os.path.join(os.path.dirname(out), "inputs", "pilot.chrom.sizes")
    run = pipeline.open_run(manifest, sizes, out, Config(), sc=spark, progress=False)
    results = pipeline.run_all(run)
    assert all(r.get("skipped") for r in results.values())
    assert open(path, "rb").read() == before


def test_changed_config_on_existing_out_is_refused(roadmap_run, spark):
    from predictd.errors import PredictdError
    out, _ = roadmap_run
    manifest = os.path.join(os.path.dirname(out), "inputs", "manifest.tsv")
    sizes = os.path.join(os.path.dirname(out), "inputs", "pilot.chrom.sizes")
    run = pipeline.open_run(manifest, sizes, out, Config(latent_factors=7), sc=spark,
                            progress=False)
    with pytest.raises(PredictdError, match="holds a different run.*config"):
        pipeline.run_all(run)


def test_real_encode_bigwig_end_to_end(shared, spark, tmp_path):
    """A real ENCODE bigWig (hg19 chr22, varying spans): ingest matches pyBigWig, and the
    pipeline writes readable imputed tracks for the chromosome."""
    bw_path = str(shared / "real_bigwigs" / "ENCFF826FLP.bw")
    sizes = tmp_path / "chr22.sizes"
    sizes.write_text("chr22\t51304566\n")
    manifest = tmp_path / "m.tsv"
    # the same real file as the one assay of two cell types
    manifest.write_text("cell_type\tassay\turi\n"
                        f"A\tsig\t{bw_path}\nB\tsig\t{bw_path}\n")
    out = str(tmp_path / "out")
    cfg = Config(latent_factors=2, training_fraction=0.02, max_iterations=6)
    run = pipeline.open_run(str(manifest), str(sizes), out, cfg, sc=spark, progress=False)
    pipeline.run_all(run)
    from predictd import tensor
    header = tensor.read_header(os.path.join(out, "tensor"))
    assert header.experiments == ["A.sig", "B.sig"]
    # a block of the tensor against pyBigWig's own per-base values, binned by hand
    chrom, block, start, nb = header.blocks()[3]
    _, X = tensor.read_block(os.path.join(out, "tensor"), chrom, block, ["A.sig"])
    bw = pyBigWig.open(bw_path)
    raw = np.nan_to_num(np.array(bw.values("chr22", start * 25, (start + nb) * 25)))
    bw.close()
    want = np.arcsinh(raw.reshape(nb, 25).mean(axis=1))
    np.testing.assert_allclose(X[:, 0], want, rtol=1e-5, atol=1e-6)
    for name in ("A.sig", "B.sig"):
        bw = pyBigWig.open(os.path.join(out, "tracks", f"{name}.imputed.bw"))
        assert bw.chroms() == {"chr22": 51304566}
        vals = bw.values("chr22", 20_000_000, 20_001_000, numpy=True)
        assert np.isfinite(vals).all() and (vals >= 0).all()
        bw.close()


def test_demo_command_runs_and_reports(tmp_path):
    """The README's first command, as a user runs it."""
    out = tmp_path / "demo"
    env = {**os.environ, "PREDICTD_DRIVER_MEMORY": "1g"}
    p = subprocess.run([sys.executable, "-m", "predictd.cli", "demo", "--out", str(out),
                        "--set", "max_iterations=8"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Held-out E116:H3K4me3" in p.stdout
    assert len(os.listdir(out / "tracks")) == 20
    assert (out / "report" / "index.html").exists()
    assert (out / "report" / "metrics.tsv").exists()
