"""Reference imputation (`predictd extend`, predictd.extend): new cell types fitted against a
finished run that is only read."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from predictd import storage
from predictd.errors import PredictdError
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


def test_extend_adds_assays_to_an_extension_and_finds_the_reference_however_named(
        reference, tmp_path, monkeypatch):
    """--assay chooses tracks, not the extension: another choice writes the tracks OUT lacks
    (the same bits as one run for both); REF given by another path is the same reference."""
    a, both = tmp_path / "a", tmp_path / "both"
    assert extend(reference, a, "--assay", "x").exit_code == 0
    assert sorted(checksums(a / "tracks")) == ["D.x.imputed.bw"]
    r = extend(reference, a, "--assay", "y")
    assert r.exit_code == 0 and "fit       skipped" in r.output, r.output + r.stderr
    assert extend(reference, both, "--assay", "x", "--assay", "y").exit_code == 0
    assert checksums(a / "tracks") == checksums(both / "tracks")
    monkeypatch.chdir(reference["ref"].parent)
    r = invoke("extend", "-r", reference["ref"].name, "-m", reference["new"], "-o", a,
               "--no-spark", "--assay", "x")
    assert r.exit_code == 0 and "impute    skipped" in r.output, r.output + r.stderr


def _without_stack_stats(ref):
    """REF as a run that saved no stacking statistics left it (model.json without their
    checksum, the train marker recording that model.json)."""
    model_dir = ref / "model"
    (model_dir / "stack_stats.npz").unlink()
    doc = json.loads((model_dir / "model.json").read_text())
    del doc["meta"]["stack_stats_sha256"]
    (model_dir / "model.json").write_text(json.dumps(doc, indent=1, sort_keys=True))
    marker = ref / "_predictd" / "train.done.json"
    mark = json.loads(marker.read_text())
    mark["model_sha256"] = hashlib.sha256((model_dir / "model.json").read_bytes()).hexdigest()
    marker.write_text(json.dumps(mark))


@pytest.mark.slow
def test_extend_learns_from_the_statistics_the_reference_saved(reference, tmp_path,
                                                               monkeypatch):
    # REF's cell types' statistics come from its model/stack_stats.npz: the fit computes only
    # the new cell type's own; a REF without them has them recomputed
    from predictd.solvers import stacking
    asked = []
    real = stacking.stack_stats

    def spy(*args, **kw):
        asked.append(kw.get("cells"))
        return real(*args, **kw)

    monkeypatch.setattr(stacking, "stack_stats", spy)
    # (a reference of 2 cell types: its statistics are recomputed unless told otherwise)
    from predictd import extend as extend_mod
    assert extend(reference, tmp_path / "c", "--assay", "y").exit_code == 0
    assert asked and all(c is None for c in asked)
    asked.clear()
    monkeypatch.setattr(extend_mod, "SAVED_STATS_MIN_CELL_TYPES", 2)
    assert extend(reference, tmp_path / "a", "--assay", "y").exit_code == 0
    n_ref = len(json.loads((reference["ref"] / "model" / "model.json").read_text())
                ["cell_types"])
    assert asked and all(c == [n_ref] for c in asked)
    # the new cell type's nearest REF cell types for every assay, those it lacks included:
    # here every REF cell type (fewer than the limit)
    near = np.load(tmp_path / "a" / "model" / "factors.npz")["stack_neighbours"]
    assert near.shape[:2] == (1, 2) and (np.sort(near[0], axis=1)[:, -n_ref:] ==
                                         np.arange(n_ref)).all()
    asked.clear()
    old = altered_copy(reference, tmp_path, _without_stack_stats)
    r = extend(old, tmp_path / "b", "--assay", "y")
    assert r.exit_code == 0, r.output + r.stderr
    assert asked and all(c is None for c in asked)
    # both are fits of the same weights on (almost) the same statistics
    wa = np.load(tmp_path / "a" / "model" / "factors.npz")["stack"]
    wb = np.load(tmp_path / "b" / "model" / "factors.npz")["stack"]
    ok = np.isfinite(wa)
    assert ok.any() and np.array_equal(ok, np.isfinite(wb))
    assert not np.array_equal(wa[ok], wb[ok])
    np.testing.assert_allclose(wa[ok], wb[ok], rtol=0.5, atol=0.05)
    # recomputed because REF is small or because it saved none: the same computation
    wc = np.load(tmp_path / "c" / "model" / "factors.npz")["stack"]
    np.testing.assert_array_equal(wc, wb)


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


# --------------------------------------------------------------------------- bad inputs
def altered_copy(reference, tmp_path, how):
    ref = tmp_path / "ref"
    shutil.copytree(reference["ref"], ref)
    how(ref)
    return {**reference, "ref": ref}


def _drop_impute_marker(ref):
    (ref / "_predictd" / "impute.done.json").unlink()


def _change_factors(ref):
    path = ref / "model" / "factors.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["C"] = arrays["C"] * 1.01
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _change_stack_stats(ref):
    path = ref / "model" / "stack_stats.npz"
    with np.load(path) as z:
        gram = z["gram"].copy()
    gram[0, 0, 0] += 1.0
    with open(path, "wb") as fh:
        np.savez(fh, gram=gram)


def _drop_stack_stats(ref):
    (ref / "model" / "stack_stats.npz").unlink()


def _change_model_json(ref):
    path = ref / "model" / "model.json"
    doc = json.loads(path.read_text())
    doc["mu"] += 0.5
    path.write_text(json.dumps(doc, indent=1, sort_keys=True))


def _manifest(reference, tmp_path, rows):
    path = tmp_path / "bad.tsv"
    path.write_text("cell_type\tassay\turi\n" + "".join("\t".join(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("case, culprit", [
    ("missing reference", "no model"),
    ("unfinished reference", "unfinished"),
    ("factors altered", "model files altered"),
    ("model.json altered", "model files altered"),
    ("stacking statistics altered", "model files altered"),
    ("stacking statistics missing", "stack_stats.npz: missing"),
    ("cell type in the reference", "cell type A is already in the reference"),
    ("unknown assay", "assay z is unknown to the reference"),
    ("--assay not in the reference", "--assay z"),
    ("other chrom sizes", "other chrom sizes"),
    ("regions off the genome", "chromosome chrZ is not in the genome"),
    ("fixed config key", "'bin_size': fixed by the reference"),
    ("out inside the reference", "inside the reference"),
])
def test_extend_refuses_bad_inputs_writing_nothing(reference, tmp_path, toy, case, culprit):
    inp, args, manifest = reference["in"], [], None
    ref = reference
    if case == "missing reference":
        ref = {**reference, "ref": tmp_path / "nowhere"}
    elif case == "unfinished reference":
        ref = altered_copy(reference, tmp_path, _drop_impute_marker)
    elif case == "factors altered":
        ref = altered_copy(reference, tmp_path, _change_factors)
    elif case == "model.json altered":
        ref = altered_copy(reference, tmp_path, _change_model_json)
    elif case == "stacking statistics altered":
        ref = altered_copy(reference, tmp_path, _change_stack_stats)
    elif case == "stacking statistics missing":
        ref = altered_copy(reference, tmp_path, _drop_stack_stats)
    elif case == "cell type in the reference":
        manifest = _manifest(reference, tmp_path, [("A", "x", str(inp / "C.x.bw"))])
    elif case == "unknown assay":
        manifest = _manifest(reference, tmp_path, [("D", "z", str(inp / "C.x.bw"))])
    elif case == "--assay not in the reference":
        args = ["--assay", "z"]
    elif case == "other chrom sizes":
        short = toy.write_track(tmp_path / "short.bw", chroms=[("chr1", 90_000),
                                                             ("chr2", 100_000)])
        manifest = _manifest(reference, tmp_path, [("D", "x", short)])
    elif case == "regions off the genome":
        bed = tmp_path / "r.bed"
        bed.write_text("chr1\t0\t1000\nchrZ\t0\t1000\n")
        args = ["--regions", bed]
    elif case == "fixed config key":
        args = ["--set", "bin_size=50"]
    out = tmp_path / "out"
    if case == "out inside the reference":
        ref = altered_copy(reference, tmp_path, lambda r: None)
        out = ref["ref"] / "mine"
    r = extend(ref, out, *args, manifest=manifest)
    assert r.exit_code != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and culprit in lines[0], r.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- Python API
def test_impute_reads_only_overlapping_blocks_and_equals_the_written_track(reference, tmp_path,
                                                                          monkeypatch):
    import pyBigWig

    import predictd
    from predictd import impute, tensor
    ext = predictd.open_reference(str(reference["ref"])).extend(
        {("D", "x"): reference["in"] / "C.x.bw"}, workdir=str(tmp_path / "work"))
    ext.write(str(tmp_path / "out"))
    read = []
    real_block, real_gf = tensor.read_block, impute.read_gf_parts
    monkeypatch.setattr(tensor, "read_block",
                        lambda root, c, b, cols, *into: read.append(("tensor", c, b)) or
                        real_block(root, c, b, cols, *into))
    monkeypatch.setattr(impute, "read_gf_parts",
                        lambda uri, sums=True: read.append(("gf", uri)) or real_gf(uri, sums))
    x = ext.impute("D", "y", "chr1", 30_010, 60_000)   # bins 1200..2399: blocks 1 and 2
    assert x.dtype == np.float32 and x.shape == (2400 - 1200,)
    assert {r[2] for r in read if r[0] == "tensor"} == {1, 2}
    assert {r[1].rsplit("/", 2)[-2:][1] for r in read if r[0] == "gf"} == \
        {"block=000001.parquet", "block=000002.parquet"}
    with pyBigWig.open(str(tmp_path / "out" / "tracks" / "D.y.imputed.bw")) as bw:
        written = np.array(bw.values("chr1", 30_000, 60_000), dtype=np.float32)[::25]
    np.testing.assert_array_equal(x, written)
    with pytest.raises(PredictdError, match="chrZ"):
        ext.impute("D", "y", "chrZ", 0, 10)


def readme_python_block() -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = text.index("```python\nimport predictd\n")
    return text[start + len("```python\n"):text.index("```", start + 9)]


@pytest.mark.slow
def test_readme_example_runs(tmp_path, write_small_run_inputs, monkeypatch):
    import predictd
    inp = write_small_run_inputs(tmp_path / "in")
    names = {"x": "H3K4me3", "y": "H3K27me3"}
    (tmp_path / "m.tsv").write_text("cell_type\tassay\turi\n" + "".join(
        f"{c}\t{names[a]}\t{tmp_path / 'in' / f'{c}.{a}.bw'}\n" for c in "AB" for a in "xy"))
    (tmp_path / "my_sample.tsv").write_text(
        f"cell_type\tassay\turi\nmyT\tH3K4me3\t{tmp_path / 'in' / 'C.x.bw'}\n")
    summary = predictd.run(manifest=str(tmp_path / "m.tsv"), genome=inp.sizes,
                           out=str(tmp_path / "ref"), latent_factors=3, max_iterations=4,
                           training_fraction=0.3, block_bins=1024)
    assert set(summary) == {"ingest", "train", "impute", "evaluate"}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # extend's scratch work directory
    scope = {}
    exec(readme_python_block(), scope)  # noqa: S102 - the README's own example
    x = scope["x"]
    assert x.dtype == np.float32 and x.size == 100_000 // 25 and np.isfinite(x).all()
    assert (tmp_path / "my_out" / "tracks" / "myT.H3K27me3.imputed.bw").exists()


@pytest.mark.parametrize("settings", [("stack_similar=0", "stack_hinges=false"),
                                      ("stack=false",)])
def test_extend_with_the_plain_average_or_the_factor_model_alone(reference, tmp_path, settings):
    r = extend(reference, tmp_path / "o", *[a for s in settings for a in ("--set", s)])
    assert r.exit_code == 0, r.output + r.stderr
    assert (tmp_path / "o" / "tracks" / "D.y.imputed.bw").exists()
    doc = json.loads((tmp_path / "o" / "run.json").read_text())
    for setting in settings:
        key, value = setting.split("=")
        assert str(doc["config"][key]).lower() == value


def test_extend_regions_write_only_those_loci(reference, tmp_path):
    import pyBigWig
    bed = tmp_path / "r.bed"
    bed.write_text("chr2\t5000\t7500\n")
    assert extend(reference, tmp_path / "all").exit_code == 0
    r = extend(reference, tmp_path / "o", "--regions", bed)
    assert r.exit_code == 0, r.output + r.stderr
    with pyBigWig.open(str(tmp_path / "o" / "tracks" / "D.y.imputed.bw")) as bw, \
            pyBigWig.open(str(tmp_path / "all" / "tracks" / "D.y.imputed.bw")) as full:
        assert bw.intervals("chr1") is None
        iv = bw.intervals("chr2")
        assert (iv[0][0], iv[-1][1]) == (5000, 7500)
        assert bw.values("chr2", 5000, 7500) == full.values("chr2", 5000, 7500)


@pytest.mark.cloud
@pytest.mark.slow
def test_extend_a_reference_on_s3(reference, tmp_path, s3_endpoint):
    storage.s3_client().create_bucket(Bucket="refs")
    ref = reference["ref"]
    for p in sorted(ref.rglob("*")):
        if p.is_file():
            storage.upload_file(p, f"s3://refs/roadmap/{p.relative_to(ref).as_posix()}")
    before = {k: v["ETag"] for k, v in (
        (o["Key"], o) for o in storage.s3_client().list_objects_v2(
            Bucket="refs", Prefix="roadmap/")["Contents"])}
    assert extend(reference, tmp_path / "local").exit_code == 0
    r = extend({**reference, "ref": "s3://refs/roadmap"}, tmp_path / "remote")
    assert r.exit_code == 0, r.output + r.stderr
    assert checksums(tmp_path / "local" / "tracks") == checksums(tmp_path / "remote" / "tracks")
    after = {o["Key"]: o["ETag"] for o in storage.s3_client().list_objects_v2(
        Bucket="refs", Prefix="roadmap/")["Contents"]}
    assert after == before


@pytest.mark.cloud
@pytest.mark.slow
def test_extend_a_reference_on_azure(reference, tmp_path, azure_endpoint):
    from azure.storage.blob import BlobServiceClient

    container = BlobServiceClient.from_connection_string(
        os.environ["AZURE_STORAGE_CONNECTION_STRING"]).get_container_client(azure_endpoint)
    ref = reference["ref"]
    for p in sorted(ref.rglob("*")):
        if p.is_file():
            storage.upload_file(p, f"az://{azure_endpoint}/roadmap/{p.relative_to(ref).as_posix()}")
    before = {b.name: b.etag for b in container.list_blobs(name_starts_with="roadmap/")}
    assert extend(reference, tmp_path / "local").exit_code == 0
    r = extend({**reference, "ref": f"az://{azure_endpoint}/roadmap"}, tmp_path / "remote")
    assert r.exit_code == 0, r.output + r.stderr
    assert checksums(tmp_path / "local" / "tracks") == checksums(tmp_path / "remote" / "tracks")
    assert {b.name: b.etag for b in container.list_blobs(name_starts_with="roadmap/")} == before


def test_a_new_cell_type_joins_the_reference_neighbour_lists_that_have_room():
    from predictd.extend import with_new_cell
    ref = np.array([[[1, 2, -1], [1, 2, 3]],     # cell type 0: assay 0 has room, 1 is full
                    [[0, -1, -1], [0, 2, 3]],
                    [[0, 1, -1], [0, 1, 3]],
                    [[-1, -1, -1], [0, 1, 2]]])  # cell type 3 lacks assay 0's candidates
    new = np.array([[0, 1, 2], [0, 1, 2]])
    got = with_new_cell(ref, new, [0], others=True)
    assert got.shape == (5, 2, 3)
    np.testing.assert_array_equal(got[:4, 0], [[1, 2, 4], [0, 4, -1], [0, 1, 4], [4, -1, -1]])
    np.testing.assert_array_equal(got[:4, 1], ref[:, 1])   # the new one lacks assay 1
    np.testing.assert_array_equal(got[4], new)
    np.testing.assert_array_equal(with_new_cell(ref, new, [0], others=False)[:4], ref)


def test_python_extension_guards_its_places_and_its_arguments(reference, tmp_path, monkeypatch):
    """The Python API as a notebook user meets it: a reference by file:// URI; a dict of
    tracks named in messages by its keys; one string for a list; integer coordinates;
    write() never into the reference nor over another extension's tracks; a temporary work
    directory removed with its Extension."""
    import gc
    import predictd
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the work directories go
    ref = predictd.open_reference(f"file://{reference['ref']}")
    assert ref.uri == str(reference["ref"])
    bw = reference["in"] / "C.x.bw"
    for tracks, culprit in [
            ({(1, "x"): bw}, "key (1, 'x'): expected (cell_type, assay), two strings"),
            ({("my D", "x"): bw}, "extend: track ('my D', 'x'): cell_type 'my D'"),
            ({("D", "z"): bw}, "extend: track ('D', 'z'): assay z is unknown"),
            ({("A", "x"): bw}, "extend: track ('A', 'x'): cell type A is already"),
            ({("D", "x"): None}, "extend: track ('D', 'x'): expected a bigWig")]:
        with pytest.raises(PredictdError, match=re.escape(culprit)):
            ref.extend(tracks)
    assert not list(tmp_path.glob("predictd-extend-*"))  # a failed extend leaves none
    assert repr(ref) == (f"Reference('{reference['ref']}': 2 cell types x 2 assays, "
                         "4 observed tracks)")
    new = ref.extend({("D", "x"): bw}, assays="y")  # one string: the assay y
    assert repr(new) == f"Extension(cell types D against '{reference['ref']}')"
    assert new.impute("D", "y", "chr1", 0, 1000).shape == (40,)
    for start, end, culprit in [(0.0, 1000.0, "integers"), (100, 100, "empty interval")]:
        with pytest.raises(PredictdError, match=culprit):
            new.impute("D", "y", "chr1", start, end)
    for inside in (reference["ref"], reference["ref"] / "tracks"):
        with pytest.raises(PredictdError, match="inside the reference, which is only read"):
            new.write(str(inside))
    assert new.write(str(tmp_path / "o")) == ["D.y"] and new.write(str(tmp_path / "o")) == []
    other = ref.extend({("D", "x"): reference["in"] / "C.y.bw"}, assays=["y"])
    with pytest.raises(PredictdError, match="holds a different run"):
        other.write(str(tmp_path / "o"))
    assert len(list(tmp_path.glob("predictd-extend-*"))) == 2
    del new, other
    gc.collect()
    assert not list(tmp_path.glob("predictd-extend-*"))


def test_python_extend_scores_its_held_out_tracks_as_the_command_does(reference, tmp_path):
    import csv

    import predictd
    r = extend(reference, tmp_path / "cli", "--holdout", "D:y", manifest=reference["new_xy"])
    assert r.exit_code == 0, r.output + r.stderr
    with open(tmp_path / "cli" / "report" / "metrics.tsv") as fh:
        cli = list(csv.DictReader(fh, delimiter="\t"))
    ref = predictd.open_reference(str(reference["ref"]))
    ext = ref.extend(str(reference["new_xy"]), holdout="D:y", workdir=str(tmp_path / "work"))
    rows = ext.evaluate()
    assert [(x["cell_type"], x["assay"], x["method"]) for x in rows] == \
        [(x["cell_type"], x["assay"], x["method"]) for x in cli] == \
        [("D", "y", "model"), ("D", "y", "average")]
    for mine, theirs in zip(rows, cli):
        assert mine["mse"] == pytest.approx(float(theirs["mse"]), rel=1e-9)
        assert mine["gwcorr"] == pytest.approx(float(theirs["gwcorr"]), rel=1e-9)
    assert (tmp_path / "work" / "report" / "metrics.tsv").exists()
    assert ext.evaluate() == rows                       # the second call reads the first's
    with pytest.raises(PredictdError, match="no held-out track to score"):
        ref.extend({("D", "x"): reference["in"] / "C.x.bw"}).evaluate()
