"""``predictd score``: any pair of bigWigs scored with the pipeline's metrics, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from predictd import evaluate, metrics
from predictd.annotations import genome_blacklist
from predictd.bigwig import BigWigWriter
from predictd.cli.main import cli
from predictd.genome import load_genome

CHROMS = [("chrA", 60_000), ("chrB", 40_010)]  # 2,400 + 1,601 bins, the last one partial


def write(path, per_chrom, chroms=CHROMS):
    with BigWigWriter(str(path), chroms) as w:
        for c, _ in chroms:
            w.add_block(c, 0, np.asarray(per_chrom[c], dtype=np.float32))
    return str(path)


def nbins(n):
    return -(-n // 25)


def tracks(seed, chroms=CHROMS):
    rng = np.random.default_rng(seed)
    return {c: rng.gamma(0.5, 3.0, nbins(n)).astype(np.float32) for c, n in chroms}


def run_cli(*args):
    from predictd.cli import score  # noqa: F401 - registers the command
    return CliRunner().invoke(cli, ["score", *args], catch_exceptions=False)


def test_scores_equal_the_metrics_of_the_arcsinh_values(tmp_path):
    t, p = tracks(0), tracks(1)
    truth, pred = write(tmp_path / "t.bw", t), write(tmp_path / "p.bw", p)
    res = run_cli("--truth", truth, "--pred", pred, "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    y = np.arcsinh(np.concatenate([t[c] for c, _ in CHROMS]).astype(np.float32))
    yhat = np.arcsinh(np.concatenate([p[c] for c, _ in CHROMS]).astype(np.float32))
    want = metrics.score_track(y, yhat)
    assert list(got) == metrics.METRIC_NAMES  # not an hg38 genome: no region metrics
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-9), k
    # the table form names the same metrics; a replicate of itself scores perfectly
    res = run_cli("--truth", truth, "--pred", truth)
    lines = dict(line.split() for line in res.output.splitlines())
    assert list(lines) == metrics.METRIC_NAMES and float(lines["mse"]) == 0.0
    assert float(lines["gwcorr"]) == 1.0
    # values already in the scoring space
    got = evaluate.score_bigwigs(truth, pred, transform="none")
    want = metrics.score_track(np.concatenate([t[c] for c, _ in CHROMS]),
                               np.concatenate([p[c] for c, _ in CHROMS]))
    assert got["mse"] == pytest.approx(want["mse"], rel=1e-6)


def test_var_adds_msevar_and_genome_picks_chromosomes(tmp_path):
    t, p = tracks(0), tracks(1)
    others = [tracks(s) for s in (2, 3)]
    var = {c: metrics.assay_variance(np.stack([np.arcsinh(x[c]) for x in [t, *others]], 1))
           for c, _ in CHROMS}
    truth, pred = write(tmp_path / "t.bw", t), write(tmp_path / "p.bw", p)
    v = write(tmp_path / "v.bw", var)
    got = evaluate.score_bigwigs(truth, pred, var=v)
    y = np.arcsinh(np.concatenate([t[c] for c, _ in CHROMS]))
    yhat = np.arcsinh(np.concatenate([p[c] for c, _ in CHROMS]))
    w = np.concatenate([var[c] for c, _ in CHROMS]).astype(np.float32)
    assert list(got)[-1] == "msevar"
    assert got["msevar"] == pytest.approx(metrics.msevar(y, yhat, w), rel=1e-5)
    # a chrom.sizes with one of the chromosomes: only its bins are scored
    sizes = tmp_path / "a.sizes"
    sizes.write_text("chrA\t60000\nchrZ\t1000\n")
    got = evaluate.score_bigwigs(truth, pred, genome=str(sizes))
    assert got["mse"] == pytest.approx(
        metrics.mse(np.arcsinh(t["chrA"]), np.arcsinh(p["chrA"])), rel=1e-6)


def test_bad_inputs_are_one_line_naming_the_file(tmp_path):
    from predictd.cli import score  # noqa: F401 - registers the command
    truth = write(tmp_path / "t.bw", tracks(0))
    short = write(tmp_path / "short.bw", {"chrA": tracks(1)["chrA"]}, CHROMS[:1])
    not_bw = tmp_path / "x.bw"
    not_bw.write_text("not a bigWig\n")
    import pyBigWig  # predictd's own writer refuses NaN; another tool's may not
    nan_bw = str(tmp_path / "nan.bw")
    with pyBigWig.open(nan_bw, "w") as bw:
        bw.addHeader(CHROMS)
        for c, n in CHROMS:
            v = tracks(2)[c].astype(np.float64)[:n // 25]  # whole bins: none past the end
            if c == "chrB":
                v[10] = np.nan
            bw.addEntries(c, 0, values=v.tolist(), span=25, step=25)
    cases = [(["--pred", short], "short.bw: has no chromosome chrB"),
             (["--pred", str(not_bw)], "x.bw"),
             (["--pred", nan_bw], "nan.bw: bigWig has NaN or infinite values"),
             (["--pred", truth, "--var", short], "short.bw"),
             (["--pred", truth, "--genome", "mm10"], "none of its chromosomes")]
    # the first as a user runs it (a process, its stderr); the others in-process
    p = subprocess.run([sys.executable, "-m", "predictd", "score", "--truth", truth,
                        *cases[0][0]], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and cases[0][1] in lines[0], lines
    for args, culprit in cases[1:]:
        res = CliRunner().invoke(cli, ["score", "--truth", truth, *args])
        assert res.exit_code == 2
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and culprit in lines[0] and "predictd: error" in lines[0], lines


@pytest.mark.slow
def test_hg38_blacklist_by_default_and_region_metrics(tmp_path):
    """hg38 chr21 (recognised from its length, no --genome): its two blacklisted regions are
    not scored unless --no-blacklist; the bundled annotations give the region metrics."""
    chroms = [("chr21", load_genome("hg38").sizes["chr21"])]
    t = tracks(0, chroms)
    black = genome_blacklist({"name": None, "chroms": chroms}, 25)
    assert black is not None and 0 < black.sum() < 40  # chr21:8,219,780-8,220,120 and one more
    p = {"chr21": np.where(black, t["chr21"] + 50.0, t["chr21"]).astype(np.float32)}
    truth, pred = write(tmp_path / "t.bw", t, chroms), write(tmp_path / "p.bw", p, chroms)
    res = run_cli("--truth", truth, "--pred", pred, "--json")
    got = json.loads(res.output)
    assert list(got) == metrics.METRIC_NAMES + metrics.REGION_METRIC_NAMES
    assert got["mse"] == 0.0 and got["mseprom"] == 0.0
    res = run_cli("--truth", truth, "--pred", pred, "--json", "--no-blacklist")
    whole = json.loads(res.output)
    y = np.arcsinh(t["chr21"])
    assert whole["mse"] == pytest.approx(metrics.mse(y, np.arcsinh(p["chr21"])), rel=1e-5)
    assert whole["mse"] > 0
    # a chrom.sizes file of the same lengths is recognised as hg38: its blacklist applies
    assert evaluate.score_bigwigs(truth, pred, genome=os.fspath(_sizes(tmp_path, chroms))
                                  )["mse"] == 0.0


@pytest.mark.slow
def test_real_hg19_bigwig_blacklist_and_region_metrics(shared_path, tmp_path):
    """A real ENCODE hg19 chr22 bigWig against itself with the blacklisted bins changed: the
    bundled hg19 blacklist leaves them out (mse 0) unless --no-blacklist, and the bundled hg19
    genes and enhancers give the region metrics. mm10's blacklist applies the same way."""
    from predictd.bigwig import read_binned
    real = str(shared_path("real_bigwigs/ENCFF826FLP.bw"))
    g19 = [("chr22", load_genome("hg19").sizes["chr22"])]
    black = genome_blacklist({"name": "hg19", "chroms": g19}, 25)
    assert black is not None and 0.2 < black.mean() < 0.5   # the short arm and 15 more regions
    values = read_binned(real, "chr22", g19[0][1], 25)
    pred = write(tmp_path / "p.bw", {"chr22": np.where(black, values + 50.0, values)}, g19)
    got = json.loads(run_cli("--truth", real, "--pred", pred, "--genome", "hg19",
                             "--json").output)
    assert list(got) == metrics.METRIC_NAMES + metrics.REGION_METRIC_NAMES
    assert got["mse"] == pytest.approx(0.0, abs=1e-9)
    assert all(np.isfinite(got[m]) for m in metrics.REGION_METRIC_NAMES)
    whole = json.loads(run_cli("--truth", real, "--pred", pred, "--json",
                               "--no-blacklist").output)
    y = np.arcsinh(values)
    expect = metrics.mse(y, np.arcsinh(np.where(black, values + 50.0, values).astype(np.float32)))
    assert whole["mse"] == pytest.approx(expect, rel=1e-4) and whole["mse"] > 1.0
    # mm10: its blacklist, no region metrics
    m10 = [("chr19", load_genome("mm10").sizes["chr19"])]
    bm = genome_blacklist({"name": "mm10", "chroms": m10}, 25)
    assert bm is not None and 0 < bm.mean() < 0.2
    t10 = tracks(0, m10)
    p10 = {"chr19": np.where(bm, t10["chr19"] + 50.0, t10["chr19"]).astype(np.float32)}
    got = evaluate.score_bigwigs(write(tmp_path / "t10.bw", t10, m10),
                                 write(tmp_path / "p10.bw", p10, m10), genome="mm10")
    assert list(got) == metrics.METRIC_NAMES and got["mse"] == 0.0


def _sizes(tmp_path, chroms):
    path = tmp_path / "hg38.chr21.sizes"
    path.write_text("".join(f"{c}\t{n}\n" for c, n in chroms))
    return path
