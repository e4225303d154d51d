"""Bad input → one line naming the culprit, a non-zero exit, no traceback, nothing at OUT.

Every case runs the real CLI (``python -m predictd.cli run ...``) as a user would, on a tiny
genome (two 100 kb chromosomes) and five small bigWigs written in the test. ``--no-spark`` keeps
each case under a second; one case goes through Spark to show that an error raised inside a
Spark task reaches the user as the same single line.

Decisions recorded here:

- an all-zero or empty (no data at all) track is *kept* with a warning naming it: a real assay
  can be flat over a small genome, and refusing would block the whole run;
- NaN or infinite values in a bigWig are refused when the tracks are checked (the header's
  whole-file summary shows them, so no binning is needed to find them);
- every input is checked (manifest, config, genome, every bigWig opened, md5s verified) before
  anything is written at OUT, so a failed run leaves OUT as it found it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyBigWig
import pytest

REPO = Path(__file__).resolve().parent.parent
FAST = ["--set", "latent_factors=2", "--set", "max_iterations=3", "--set",
        "training_fraction=0.2"]


def write_raw_bigwig(path, chroms, chrom, values):
    """A bigWig written by pyBigWig directly, so values BigWigWriter refuses (NaN, inf) fit."""
    bw = pyBigWig.open(str(path), "w")
    bw.addHeader(chroms, maxZooms=0)
    bw.addEntries(chrom, 0, values=[float(v) for v in values], span=25, step=25)
    bw.close()
    return str(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, toy):
    d = tmp_path_factory.mktemp("inputs")
    (d / "g.sizes").write_text("".join(f"{c}\t{n}\n" for c, n in toy.chroms))
    for i, name in enumerate(toy.tracks):
        toy.write_track(d / f"{name}.bw", seed=i)
    (d / "m.tsv").write_text(toy.manifest_text([(*n.split("."), f"{n}.bw")
                                                for n in toy.tracks]))
    return d


def run_cli(args, cwd=None, env=None, timeout=240):
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO)}
    env.pop("PREDICTD_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "predictd.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


def tree(path) -> dict:
    """{relative path: bytes} of every file under path (empty when it does not exist)."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            out[os.path.relpath(full, path)] = open(full, "rb").read()
    return out


def assert_one_line_error(p, *patterns):
    assert p.returncode != 0, p.stdout + p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{p.stderr}"
    line = lines[0]
    assert line.startswith("predictd: error: "), line
    assert "Traceback" not in p.stderr and "internal error" not in line
    for pat in patterns:
        assert re.search(pat, line), (pat, line)
    return line


# --------------------------------------------------------------------------- the cases
# Each case builds its inputs in `d` (a fresh copy of the good inputs) with the toy genome's
# helpers (the `toy` fixture) and returns the extra CLI arguments (manifest, genome, config) and
# the patterns the error line must contain.
def _rows(toy, replace=None, extra=()):
    rows = [(*n.split("."), f"{n}.bw") for n in toy.tracks]
    if replace:
        rows = [replace.get(f"{r[0]}.{r[1]}", r) for r in rows]
    return rows + list(extra)


def case_manifest_missing(d, toy):
    return ["-m", str(d / "nope.tsv")], [r"manifest not found: \S*nope\.tsv"]


def case_manifest_empty(d, toy):
    (d / "m.tsv").write_text("")
    return [], [r"manifest \S*m\.tsv is empty"]


def case_manifest_header_only(d, toy):
    (d / "m.tsv").write_text("cell_type\tassay\turi\n")
    return [], [r"\S*m\.tsv has a header but no data rows"]


def case_manifest_missing_column(d, toy):
    (d / "m.tsv").write_text(toy.manifest_text(_rows(toy), header="cell_type\tassay\tpath"))
    return [], [r"m\.tsv, row 1 \(header\): missing required column\(s\) uri"]


def case_manifest_wrong_column_count(d, toy):
    text = toy.manifest_text(_rows(toy)) + "C\ty\n"
    (d / "m.tsv").write_text(text)
    return [], [r"m\.tsv, row 7: expected 3 tab-separated columns"]


def case_duplicate_rows(d, toy):
    (d / "m.tsv").write_text(toy.manifest_text(_rows(toy, extra=[("B", "x", "A.x.bw")])))
    return [], [r"m\.tsv, row 7: duplicate track B\.x \(also on row 4\)"]


def case_unsafe_name(d, toy):
    (d / "m.tsv").write_text(toy.manifest_text(
        _rows(toy, replace={"C.x": ("C/../..", "x", "C.x.bw")})))
    return [], [r"m\.tsv, row 6: cell_type 'C/\.\./\.\.' has characters unsafe"]


def case_unknown_uri_scheme(d, toy):
    (d / "m.tsv").write_text(toy.manifest_text(
        _rows(toy, replace={"B.y": ("B", "y", "ftp://example.org/B.y.bw")})))
    return [], [r"m\.tsv, row 5: uri 'ftp://example\.org/B\.y\.bw' has unsupported scheme 'ftp'"]


def case_missing_file(d, toy):
    (d / "m.tsv").write_text(toy.manifest_text(
        _rows(toy, replace={"B.x": ("B", "x", "gone.bw")})))
    return [], [r"manifest row 4 \(B\.x\): file not found: \S*gone\.bw"]


def case_permission_denied(d, toy):
    if os.geteuid() != 0:
        target = d / "locked.bw"
        shutil.copy(d / "A.x.bw", target)
        target.chmod(0)
    else:
        # root reads every regular file; procfs still refuses reads of write-only entries
        target = Path("/proc/sys/vm/compact_memory")
        if not target.exists() or os.access(target, os.R_OK):
            pytest.skip("running as root and no unreadable file to point at")
    (d / "m.tsv").write_text(toy.manifest_text(
        _rows(toy, replace={"A.y": ("A", "y", str(target))})))
    return [], [r"manifest row 3 \(A\.y\): permission denied reading " + re.escape(str(target))]


def case_truncated_bigwig(d, toy):
    data = (d / "B.y.bw").read_bytes()
    (d / "B.y.bw").write_bytes(data[: len(data) // 2])
    return [], [r"truncated or corrupt bigWig file .*\S*B\.y\.bw"]


def case_not_a_bigwig(d, toy):
    (d / "B.y.bw").write_text("track type=bedGraph\nchr1\t0\t100\t1.5\n")
    return [], [r"not a bigWig file \(bad magic number\): \S*B\.y\.bw"]


def case_gzip_not_bigwig(d, toy):
    import gzip
    (d / "B.y.bw").write_bytes(gzip.compress(b"chr1\t0\t100\t1.5\n" * 100))
    return [], [r"not a bigWig file \(bad magic number\): \S*B\.y\.bw"]


def case_chromosome_names_match_nothing(d, toy):
    toy.write_track(d / "B.y.bw", chroms=[("1", 100_000), ("2", 100_000)])
    return [], [r"\S*B\.y\.bw \(manifest row 5\): no chromosome name matches genome",
                r"file has 1, 2"]


def case_chromosome_longer_than_genome(d, toy):
    toy.write_track(d / "B.y.bw", chroms=[("chr1", 150_000), ("chr2", 100_000)])
    return [], [r"chromosome size mismatch: \S*B\.y\.bw has chr1 of 150000 bp, genome \S+ says "
                r"100000 bp"]


def case_inf_values(d, toy):
    write_raw_bigwig(d / "B.y.bw", toy.chroms, "chr2", [1.0, 2.0, np.inf, 3.0])
    return [], [r"\S*B\.y\.bw \(manifest row 5\): bigWig has NaN or infinite values"]


def case_nan_values(d, toy):
    write_raw_bigwig(d / "B.y.bw", toy.chroms, "chr1", [1.0, np.nan, 3.0])
    return [], [r"\S*B\.y\.bw \(manifest row 5\): bigWig has NaN or infinite values"]


def case_md5_mismatch(d, toy):
    rows = [(*r, "0" * 32 if r[0] == "A" and r[1] == "y" else "") for r in _rows(toy)]
    (d / "m.tsv").write_text(toy.manifest_text(rows, header="cell_type\tassay\turi\tmd5"))
    return [], [r"md5 mismatch for \S*A\.y\.bw \(manifest row 3\): expected 0{32}, got [0-9a-f]{32}"]


def case_md5_malformed(d, toy):
    rows = [(*r, "xyz" if r[0] == "A" and r[1] == "y" else "") for r in _rows(toy)]
    (d / "m.tsv").write_text(toy.manifest_text(rows, header="cell_type\tassay\turi\tmd5"))
    return [], [r"m\.tsv, row 3: md5 'xyz' is not 32 hexadecimal characters"]


def case_config_unknown_key(d, toy):
    (d / "c.toml").write_text("latent_factor = 3\n")
    return ["--config", str(d / "c.toml")], [r"config file \S*c\.toml: unknown key "
                                             r"'latent_factor' \(did you mean 'latent_factors'\?\)"]


def case_config_wrong_type(d, toy):
    (d / "c.toml").write_text('seed = "one"\n')
    return ["--config", str(d / "c.toml")], [r"c\.toml: key 'seed' must be an integer, "
                                             r"got 'one'"]


def case_config_out_of_range(d, toy):
    (d / "c.toml").write_text("validation_fraction = 0.95\n")
    return ["--config", str(d / "c.toml")], [r"c\.toml: key 'validation_fraction' must be "
                                             r"<= 0\.9, got 0\.95"]


def case_config_bad_choice(d, toy):
    (d / "c.toml").write_text('solver = "adam"\n')
    return ["--config", str(d / "c.toml")], [r"key 'solver' must be one of 'als', 'sgd'"]


def case_config_not_toml(d, toy):
    (d / "c.toml").write_text("latent_factors: 3\n")
    return ["--config", str(d / "c.toml")], [r"config file \S*c\.toml: not valid TOML"]


def case_config_missing(d, toy):
    return ["--config", str(d / "none.toml")], [r"config file not found: \S*none\.toml"]


def case_set_out_of_range(d, toy):
    return ["--set", "latent_factors=0"], [r"config: key 'latent_factors' must be >= 1, got 0"]


def case_genome_missing(d, toy):
    return ["-g", str(d / "none.sizes")], [r"none\.sizes"]


def case_holdout_not_in_manifest(d, toy):
    return ["--holdout", "C:y"], [r"--holdout C:y: not a track of the manifest"]


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_leaves_out_untouched(case, inputs, toy, tmp_path):
    d = tmp_path / "in"
    shutil.copytree(inputs, d)
    extra, patterns = CASES[case](d, toy)
    out = tmp_path / "out"
    base = {"-m": str(d / "m.tsv"), "-g": str(d / "g.sizes")}
    for flag in ("-m", "-g"):
        if flag in extra:
            i = extra.index(flag)
            base[flag] = extra[i + 1]
            extra = extra[:i] + extra[i + 2:]
    p = run_cli(["run", "-m", base["-m"], "-g", base["-g"], "-o", str(out), "--no-spark",
                 *FAST, *extra])
    line = assert_one_line_error(p, *patterns)
    assert not out.exists(), f"{case}: OUT was created: {sorted(tree(out))}"
    # the table for the closing note (pytest -s shows it)
    print(f"\n| {case} | exit {p.returncode} | {line} |")


@pytest.mark.slow
@pytest.mark.spark
def test_bad_track_under_spark_is_the_same_one_line(inputs, tmp_path):
    """A PredictdError raised inside a Spark task (the track check) reaches the user as one
    line, not a Java stack trace, and nothing is written."""
    d = tmp_path / "in"
    shutil.copytree(inputs, d)
    data = (d / "A.y.bw").read_bytes()
    (d / "A.y.bw").write_bytes(data[:1000])
    out = tmp_path / "out"
    p = run_cli(["run", "-m", str(d / "m.tsv"), "-g", str(d / "g.sizes"), "-o", str(out),
                 "--master", "local[2]", *FAST],
                env={"PREDICTD_DRIVER_MEMORY": "1g"})
    assert_one_line_error(p, r"truncated or corrupt bigWig file .*\S*A\.y\.bw")
    assert not out.exists()


@pytest.mark.slow
def test_output_prefix_holding_a_different_run(inputs, toy, tmp_path):
    out = tmp_path / "out"
    args = ["run", "-m", str(inputs / "m.tsv"), "-g", str(inputs / "g.sizes"), "-o", str(out),
            "--no-spark", *FAST]
    first = run_cli(args)
    assert first.returncode == 0, first.stderr
    before = tree(out)
    assert any(k.startswith("tracks/") for k in before)

    # a different config: refused, OUT byte-for-byte as it was
    p = run_cli(args + ["--set", "seed=7"])
    assert_one_line_error(p, re.escape(str(out)) + r" holds a different run \(config changed\)",
                          "--overwrite")
    assert tree(out) == before

    # a different manifest (one track fewer): refused too
    m2 = tmp_path / "m2.tsv"
    m2.write_text(toy.manifest_text(
        [(*n.split("."), str(inputs / f"{n}.bw")) for n in toy.tracks[:-1]]
        + [("C", "x", str(inputs / "A.x.bw"))]))
    p = run_cli(["run", "-m", str(m2), *args[3:]])
    assert_one_line_error(p, r"holds a different run \(manifest changed\)")
    assert tree(out) == before

    # a bad input with --overwrite: the old run survives (inputs are checked before clearing)
    bad = tmp_path / "bad"
    shutil.copytree(inputs, bad)
    (bad / "B.y.bw").write_text("not a bigwig")
    p = run_cli(["run", "-m", str(bad / "m.tsv"), *args[3:], "--set", "seed=7", "--overwrite"])
    assert_one_line_error(p, r"not a bigWig file \(bad magic number\): \S*B\.y\.bw")
    assert tree(out) == before

    # --overwrite replaces it
    p = run_cli(args + ["--set", "seed=7", "--overwrite"])
    assert p.returncode == 0, p.stderr
    assert "--overwrite: removing the previous run" in p.stderr
    after = tree(out)
    assert after["model/factors.npz"] != before["model/factors.npz"]


def test_foreign_files_at_out_are_refused(inputs, tmp_path):
    out = tmp_path / "out"
    (out / "tracks").mkdir(parents=True)
    (out / "tracks" / "mine.bw").write_bytes(b"precious")
    p = run_cli(["run", "-m", str(inputs / "m.tsv"), "-g", str(inputs / "g.sizes"), "-o",
                 str(out), "--no-spark", *FAST])
    assert_one_line_error(p, re.escape(str(out)) + r" holds outputs not made by this run")
    assert tree(out) == {"tracks/mine.bw": b"precious"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["all_zero", "empty"])
def test_flat_track_warns_names_it_and_finishes(kind, inputs, toy, tmp_path):
    """Decision: an all-zero or data-less track is kept, with one warning naming it."""
    d = tmp_path / "in"
    shutil.copytree(inputs, d)
    if kind == "all_zero":
        toy.write_track(d / "B.y.bw", values_per_chrom=0.0)
    else:
        bw = pyBigWig.open(str(d / "B.y.bw"), "w")
        bw.addHeader(toy.chroms, maxZooms=0)
        bw.close()
    out = tmp_path / "out"
    p = run_cli(["run", "-m", str(d / "m.tsv"), "-g", str(d / "g.sizes"), "-o", str(out),
                 "--no-spark", *FAST])
    assert p.returncode == 0, p.stderr
    warnings = [ln for ln in p.stderr.splitlines() if "all zeros" in ln]
    assert len(warnings) == 1, p.stderr
    assert "B.y" in warnings[0] and str(d / "B.y.bw") in warnings[0]
    assert "Traceback" not in p.stderr
    assert len(os.listdir(out / "tracks")) == 6
    print(f"\n| {kind} track | exit 0 | {warnings[0]} |")


@pytest.mark.slow
@pytest.mark.cloud
def test_missing_s3_object(inputs, toy, tmp_path, s3_endpoint):
    """A manifest row naming an S3 object that is not there: one line naming the URI."""
    import boto3
    boto3.client("s3").create_bucket(Bucket="tracks")
    d = tmp_path / "in"
    shutil.copytree(inputs, d)
    (d / "m.tsv").write_text(toy.manifest_text(
        _rows(toy, replace={"B.x": ("B", "x", "s3://tracks/missing/B.x.bw")})))
    out = tmp_path / "out"
    p = run_cli(["run", "-m", str(d / "m.tsv"), "-g", str(d / "g.sizes"), "-o", str(out),
                 "--no-spark", *FAST], env={"PREDICTD_SCRATCH": str(tmp_path / "scratch")})
    assert p.returncode != 0 and "Traceback" not in p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("predictd: error:")]
    assert errors == [p.stderr.splitlines()[-1]], p.stderr
    assert re.search(r"S3 object not found: s3://tracks/missing/B\.x\.bw", errors[0]), errors
    assert not out.exists()
    print(f"\n| missing_s3_object | exit {p.returncode} | {errors[0]} |")
    # botocore's INFO chatter ("Found credentials in environment variables.") must not reach the
    # user: the CLI keeps third-party loggers at WARNING
    other = [ln for ln in p.stderr.splitlines() if not ln.startswith("predictd: error:")]
    assert other == [], other


def test_a_shorter_chromosome_warns_naming_the_track(inputs, toy, tmp_path, caplog):
    """A chromosome shorter in the file than in the genome is most often another assembly's:
    kept (its bins past the end are missing), with a warning naming the track."""
    from predictd.genome import load_genome
    from predictd.ingest import check_tracks
    from predictd.manifest import read_manifest
    d = tmp_path / "in"
    shutil.copytree(inputs, d)
    toy.write_track(d / "B.y.bw", chroms=[("chr1", 90_000), ("chr2", 100_000)])
    check_tracks(None, read_manifest(str(d / "m.tsv")), load_genome(str(d / "g.sizes")))
    assert "B.y: chr1 is 90000 bp in the file, 100000 bp in genome" in caplog.text
    assert "(wrong assembly?)" in caplog.text
