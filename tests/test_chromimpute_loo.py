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


def test_finished_folds_are_scored_once_and_tabled_side_by_side(tmp_path):
    ci = load_script()
    rng = np.random.default_rng(0)
    tracks = {f"{c}.{a}": rng.random(300).astype(np.float32)
              for c in ("E003", "E017", "E116") for a in ("H3K4me3", "H3K9me3")}
    names, work = sorted(tracks), str(tmp_path / "w")
    for held, done in (("E003.H3K4me3", True), ("E017.H3K9me3", False)):
        fold = ci.fold_dir(work, held) + ("" if done else ".partial")  # a killed fold
        os.makedirs(os.path.join(fold, "impute"))
        with gzip.open(ci.imputed_wig(fold, held), "wt") as fh:
            fh.write("fixedStep chrom=pilot start=1 step=25 span=25\n"
                     + "".join(f"{v:.2f}\n" for v in tracks[held]))
    assert ci.finished_folds(work, names) == ["E003.H3K4me3"]
    fold = ci.fold_dir(work, "E003.H3K4me3")
    rows = ci.fold_scores(tracks, "E003.H3K4me3", fold)
    assert [r["method"] for r in rows] == ["chromimpute", "average"]
    assert rows[0]["mse"] < 1e-4 and rows[0]["gwcorr"] > 0.999  # its own values, 2 decimals
    # kept on disk: a second call reads scores.tsv, never the imputation
    os.remove(ci.imputed_wig(fold, "E003.H3K4me3"))
    assert ci.fold_scores(tracks, "E003.H3K4me3", fold)[0]["mse"] == pytest.approx(rows[0]["mse"])
    # side by side with predictd's rows: the goal is MSE <= 0.8x ChromImpute's and r >= its r
    def row(track, method, mse, r):
        cell, assay = track.split(".")
        return {"cell_type": cell, "assay": assay, "method": method, "mse": mse, "gwcorr": r}
    table = ci.side_by_side([row("A.m", "chromimpute", 0.2, 0.5), row("A.m", "average", 0.3, 0.4),
                             row("A.m", "predictd:ensemble", 0.16, 0.5),
                             row("B.m", "chromimpute", 0.2, 0.5), row("B.m", "average", 0.3, 0.4),
                             row("B.m", "predictd:ensemble", 0.161, 0.6)])
    assert [line.split(" | ")[-1] for line in table[2:]] == ["yes |", "no |", "1 of 2 |"]
    assert "CP-ALS" not in table[0]  # a method without rows gets no column
    assert table[-1].startswith("| **mean (2 tracks)** | 0.1605 / 0.550 | 0.2000 / 0.500 |")
    assert ci.side_by_side([row("A.m", "chromimpute", 0.2, 0.5)]) == []
    # a documentation page's block, headed by how many tracks it covers
    page = f"# Accuracy\n\n{ci.DOCS_BEGIN}\nold\n{ci.DOCS_END}\n\nafter\n"
    block = ci.docs_block([row("A.m", "chromimpute", 0.2, 0.5),
                           row("A.m", "predictd:ensemble", 0.1, 0.6)], 20)
    new = ci.replace_docs_block(page, block)
    assert new.startswith(f"# Accuracy\n\n{ci.DOCS_BEGIN}\n**1 of the 20 tracks** (the other 19")
    assert "old" not in new and new.endswith(f"| 1 of 1 |\n{ci.DOCS_END}\n\nafter\n")
    assert ci.replace_docs_block(new, block) == new
    with pytest.raises(ci.PredictdError, match="needs one"):
        ci.replace_docs_block("# no block\n", block)


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
    view = os.listdir(tmp_path / "w" / "folds" / held / "converted")
    assert len(view) == 19 and not any(held in name for name in view)
    assert avg["mse"] > 0 and "| chromimpute | 1 |" in (out / "chromimpute_loo.md").read_text()
    assert os.path.isdir(tmp_path / "w" / "converted")
