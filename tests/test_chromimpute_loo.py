"""benchmarks/chromimpute_loo.py: ChromImpute's jar on a leave-one-track-out fold of the pilot,
scored with predictd's metrics (a small region; the full comparison takes over an hour)."""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from predictd.metrics import score_track
from predictd.report import read_metrics_tsv, write_metrics_tsv

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "chromimpute_loo.py"


def load_script():
    spec = importlib.util.spec_from_file_location("chromimpute_loo", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bedgraph_runs_and_wig_reading(tmp_path):
    ci = load_script()
    v = np.array([0.0, 0.0, 1.23456, 1.23456, 2.0, 0.0], dtype=np.float32)
    path = str(tmp_path / "t.bedgraph.gz")
    ci.write_bedgraph(path, v)
    with gzip.open(path, "rt") as fh:
        lines = fh.read().splitlines()
    # equal neighbours merged, 25 bp bins from 0
    assert lines == ["pilot\t0\t50\t0.0000", "pilot\t50\t100\t1.2346", "pilot\t100\t125\t2.0000",
                     "pilot\t125\t150\t0.0000"]
    wig = str(tmp_path / "w.wig.gz")
    with gzip.open(wig, "wt") as fh:
        fh.write("track type=wiggle_0 name=x\nfixedStep chrom=pilot start=1 step=25 span=25\n"
                 "0.5\n1\n0\n")
    np.testing.assert_array_equal(ci.read_wig(wig, 5), [0.5, 1, 0, 0, 0])
    np.testing.assert_array_equal(ci.read_wig(wig, 2), [0.5, 1])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="needs java")
def test_one_fold_on_a_small_region(shared, tmp_path):
    jar = shared.parent / "peers" / "chromimpute" / "ChromImpute.jar"
    if not jar.is_file():
        pytest.skip(f"no ChromImpute jar at {jar}")
    held = "E116.H3K4me3"
    theirs = tmp_path / "predictd_metrics.tsv"  # predictd's cross-validation rows to join
    write_metrics_tsv(theirs, [{"cell_type": "E116", "assay": "H3K4me3", "method": "ensemble",
                                **score_track(np.arange(200.0), np.arange(200.0))}])
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(SCRIPT), "--jar", str(jar),
                        "--pilot-dir", str(shared / "roadmap_pilot"), "--tracks", held,
                        "--bins", "20000", "--memory", "1500M", "--work", str(tmp_path / "w"),
                        "--out", str(out), "--predictd", str(theirs)],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = read_metrics_tsv(out / "chromimpute_loo.tsv")
    assert [r["method"] for r in rows] == ["chromimpute", "average", "predictd:ensemble"]
    ci, avg = rows[0], rows[1]
    # ChromImpute learned something from the other 19 tracks, scored in arcsinh space
    assert 0.3 < ci["gwcorr"] <= 1 and 0 < ci["mse"] < 1 and ci["msevar"] > 0
    # its imputation is ChromImpute's own output file, aligned bin for bin with the truth
    mod = load_script()
    from predictd.demo import demo_tracks
    y = demo_tracks(str(shared / "roadmap_pilot"))[held][:20000]
    wig = tmp_path / "w" / "folds" / held / "impute" / "pilot_impute_E116_H3K4me3.wig.gz"
    yhat = mod.read_wig(str(wig), 20000)
    assert ci["mse"] == pytest.approx(float(np.mean((y - yhat) ** 2)), rel=1e-6)
    r = [np.corrcoef(np.roll(yhat, s), y)[0, 1] for s in (-1, 0, 1)]
    assert r[1] == max(r)
    # the held-out track never reached ChromImpute's fold
    info = (tmp_path / "w" / "folds" / held / "inputinfo.txt").read_text()
    assert held.replace(".", "\t") not in info and len(info.splitlines()) == 19
    assert avg["mse"] > 0 and "| chromimpute | 1 |" in (out / "chromimpute_loo.md").read_text()
    assert os.path.isdir(tmp_path / "w" / "converted")
