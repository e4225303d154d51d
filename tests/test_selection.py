"""Choosing the tracks a run writes: --targets, --cell-type, --assay, --regions
(predictd.selection), shared by `predictd run`/`impute` and `predictd extend`."""

from __future__ import annotations

import numpy as np
import pyBigWig
import pytest
from click.testing import CliRunner

from predictd.cli import stages as _stage_cmds  # noqa: F401 - registers the commands
from predictd.cli.main import cli
from predictd.errors import PredictdError
from predictd.selection import read_regions, select_pairs

PAIRS = [("A", "x"), ("A", "y"), ("B", "x"), ("B", "y")]


def test_select_pairs_by_targets_and_patterns():
    assert select_pairs(PAIRS) == PAIRS
    assert select_pairs(PAIRS, assays=["y"]) == [("A", "y"), ("B", "y")]
    assert select_pairs(PAIRS, cell_types=["A"], assays=["y"]) == [("A", "y")]
    assert select_pairs(PAIRS, targets=[("B", "x")], cell_types=["A*"]) == \
        [("A", "x"), ("A", "y"), ("B", "x")]
    with pytest.raises(PredictdError, match="--targets C:x"):
        select_pairs(PAIRS, targets=[("C", "x")])
    with pytest.raises(PredictdError, match="--assay z"):
        select_pairs(PAIRS, assays=["z*"])


def test_regions_mask_blocks_and_refuse_other_chromosomes(tmp_path):
    bed = tmp_path / "r.bed"
    bed.write_text("chr1\t100\t160\nchr1\t1000\t1001\n")
    r = read_regions(str(bed), [("chr1", 5000), ("chr2", 5000)])
    m = r.block_mask("chr1", 2, 40, 25)   # bins 2..41 (50-1050 bp): bins 4-6 and 40
    assert np.flatnonzero(m).tolist() == [2, 3, 4, 38]
    assert not r.block_mask("chr2", 0, 10, 25).any()
    bed.write_text("chr1\t0\t10\nchrQ\t0\t10\n")
    with pytest.raises(PredictdError, match="chromosome chrQ is not in the genome"):
        read_regions(str(bed), [("chr1", 5000)])
    bed.write_text("chr1\t5100\t6000\n")
    with pytest.raises(PredictdError, match="chr1:5100-6000 starts past the chromosome's end"):
        read_regions(str(bed), [("chr1", 5000)])


def test_regions_past_a_chromosome_end_are_clipped_with_a_warning(tmp_path, caplog):
    bed = tmp_path / "r.bed"
    bed.write_text("chr1\t4900\t6000\n")
    r = read_regions(str(bed), [("chr1", 5000)])
    assert "1 region(s) run past their chromosome's end, e.g. chr1:4900-6000" in caplog.text
    assert np.flatnonzero(r.block_mask("chr1", 0, 200, 25)).tolist() == list(range(196, 200))


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.slow
def test_run_writes_only_the_selected_tracks_and_regions(tmp_path, write_small_run_inputs):
    inp = write_small_run_inputs(tmp_path / "in")
    bed = tmp_path / "r.bed"
    bed.write_text("chr2\t10000\t20000\n")
    out = tmp_path / "out"
    r = invoke("run", "-m", inp.manifest, "-g", inp.sizes, "-o", out, "--no-spark",
               *inp.args, "--targets", "A:x", "--assay", "y", "--cell-type", "B,C",
               "--regions", bed)
    assert r.exit_code == 0, r.output + r.stderr
    assert sorted(p.name for p in (out / "tracks").iterdir()) == \
        ["A.x.imputed.bw", "B.y.imputed.bw", "C.y.imputed.bw"]
    with pyBigWig.open(str(out / "tracks" / "B.y.imputed.bw")) as bw:
        assert bw.intervals("chr1") is None
        iv = bw.intervals("chr2")
        assert iv[0][0] == 10_000 and iv[-1][1] == 20_000
    # the same run without a selection writes the same values there
    full = tmp_path / "full"
    assert invoke("run", "-m", inp.manifest, "-g", inp.sizes, "-o", full, "--no-spark",
                  *inp.args).exit_code == 0
    with pyBigWig.open(str(out / "tracks" / "B.y.imputed.bw")) as a, \
            pyBigWig.open(str(full / "tracks" / "B.y.imputed.bw")) as b:
        np.testing.assert_array_equal(a.values("chr2", 10_000, 20_000),
                                      b.values("chr2", 10_000, 20_000))


@pytest.mark.parametrize("args, culprit", [
    (["--targets", "Z:x"], "--targets Z:x"),
    (["--cell-type", "Q*"], "--cell-type Q*"),
    (["--regions", "BED"], "chromosome chrQ is not in the genome"),
])
def test_bad_selection_is_one_line_and_writes_nothing(tmp_path, write_small_run_inputs, args,
                                                      culprit):
    inp = write_small_run_inputs(tmp_path / "in")
    bed = tmp_path / "r.bed"
    bed.write_text("chrQ\t0\t100\n")
    out = tmp_path / "out"
    r = invoke("run", "-m", inp.manifest, "-g", inp.sizes, "-o", out, "--no-spark",
               *[str(bed) if a == "BED" else a for a in args])
    assert r.exit_code != 0
    assert len(r.stderr.strip().splitlines()) == 1 and culprit in r.stderr
    assert not out.exists()


def test_selections_add_tracks_to_a_trained_run_and_regions_are_part_of_it(
        tmp_path, write_small_run_inputs):
    """ingest, then a run for one track, then another selection and none: each writes the
    tracks OUT lacks, with the same model; a different --regions is a different run."""
    inp = write_small_run_inputs(tmp_path / "in")
    out = tmp_path / "out"
    base = ["-m", inp.manifest, "-g", inp.sizes, "-o", out, "--no-spark", *inp.args]

    def tracks():
        return sorted(p.name.split(".imputed")[0] for p in (out / "tracks").glob("*.bw"))

    assert invoke("ingest", *base).exit_code == 0
    r = invoke("run", *base, "--targets", "A:x")
    assert r.exit_code == 0, r.output + r.stderr
    assert tracks() == ["A.x"]
    model = (out / "model" / "model.json").read_bytes()
    assert invoke("run", *base, "--assay", "y").exit_code == 0
    assert tracks() == ["A.x", "A.y", "B.y", "C.y"]
    r = invoke("run", *base, "--targets", "A:y")  # written already: nothing to do
    assert r.exit_code == 0 and "impute    skipped" in r.output
    assert invoke("run", *base).exit_code == 0
    assert tracks() == ["A.x", "A.y", "B.x", "B.y", "C.x", "C.y"]
    assert (out / "model" / "model.json").read_bytes() == model
    bed = tmp_path / "r.bed"
    bed.write_text("chr2\t10000\t20000\n")
    r = invoke("run", *base, "--regions", bed)
    assert r.exit_code != 0 and "(regions changed)" in r.stderr


def test_a_run_resumes_however_its_paths_are_spelled(tmp_path, write_small_run_inputs,
                                                      monkeypatch):
    """The identity holds contents: a genome file given by another path, or OUT given
    relative to another working directory, is the same run."""
    inp = write_small_run_inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert invoke("ingest", "-m", inp.manifest, "-g", inp.sizes, "-o", out, "--no-spark",
                  *inp.args).exit_code == 0
    copy = tmp_path / "copy.sizes"
    copy.write_bytes(open(inp.sizes, "rb").read())
    monkeypatch.chdir(tmp_path)
    r = invoke("ingest", "-m", inp.manifest, "-g", "copy.sizes", "-o", "out", "--no-spark",
               *inp.args)
    assert r.exit_code == 0, r.stderr
    assert "ingest    skipped" in r.output


@pytest.mark.parametrize("args, culprit", [
    (["--holdout", "A:x", "--holdout", "B:x", "--holdout", "C:x"],
     "assay x has no training track left after --holdout"),
    (["--folds", "1"], "--folds 1: need 2 <= folds <= 6"),
])
def test_an_impossible_holdout_or_folds_is_refused_before_anything_is_written(
        tmp_path, write_small_run_inputs, args, culprit):
    inp = write_small_run_inputs(tmp_path / "in")
    out = tmp_path / "out"
    r = invoke("run", "-m", inp.manifest, "-g", inp.sizes, "-o", out, "--no-spark",
               *inp.args, *args)
    assert r.exit_code != 0
    assert len(r.stderr.strip().splitlines()) == 1 and culprit in r.stderr, r.stderr
    assert not out.exists()


def test_evaluate_without_a_holdout_is_a_usage_error(tmp_path, write_small_run_inputs):
    inp = write_small_run_inputs(tmp_path / "in")
    r = invoke("evaluate", "-m", inp.manifest, "-g", inp.sizes, "-o", tmp_path / "out",
               "--no-spark")
    assert r.exit_code == 2 and "evaluate scores the --holdout tracks" in r.stderr
    assert not (tmp_path / "out").exists()
