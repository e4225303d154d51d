"""Benchmark machinery, synthetic Roadmap-shaped data, the imputation fast paths, scale-out.

No timing is asserted here: benchmarks report times, tests check that the figures exist, are
measured on the real code paths and that the results they compare agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyBigWig
import pytest
from click.testing import CliRunner

from predictd import allocator, bench, impute, layout, synthetic, tensor
from predictd.errors import PredictdError
from predictd.bench import machine, measure, probes
from predictd.model import Model
from predictd.solvers.closed_form import solve_genome_factors

REPO = Path(__file__).resolve().parent.parent


def _shared_or_skip() -> Path:
    d = Path(os.environ.get("PREDICTD_SHARED", REPO.parent / "shared")) / "data"
    if not (d / "roadmap_pilot").is_dir():
        pytest.skip(f"shared data not found at {d} (set PREDICTD_SHARED)")
    return d


# --------------------------------------------------------------------------- synthetic data
def test_roadmap_pattern_has_roadmaps_shape():
    cells, assays, observed = synthetic.roadmap_pattern()
    assert (len(cells), len(assays), len(observed)) == (127, 24, 1014)
    assert len(set(observed)) == 1014
    assert "E060" not in cells and "E064" not in cells
    # every epigenome has the five core marks (the definition of a consolidated epigenome)
    for c in cells:
        for m in synthetic.ROADMAP_CORE:
            assert (c, m) in set(observed)
    # the pairs confirmed by the bundled manifest are all there
    manifest = REPO / "data_manifests" / "roadmap_consolidated_pval.tsv"
    if manifest.exists():
        rows = [ln.split("\t")[:2] for ln in manifest.read_text().splitlines()[1:]]
        assert {tuple(r) for r in rows} <= set(observed)
    # every mark is observed somewhere, and the draw is reproducible but seed-dependent
    assert {a for _, a in observed} == set(assays)
    assert synthetic.roadmap_pattern(seed=0)[2] == observed
    assert synthetic.roadmap_pattern(seed=1)[2] != observed


def test_synthetic_tensor_is_realistic_and_reproducible(tmp_path):
    cells, assays, observed = synthetic.roadmap_pattern()
    obs = observed[:40]
    h = synthetic.write_tensor(str(tmp_path / "a"), 5000, cells, assays, obs, block_bins=2048)
    synthetic.write_tensor(str(tmp_path / "b"), 5000, cells, assays, obs, block_bins=2048)
    assert h.experiments == [f"{c}.{a}" for c, a in obs]
    assert [b[3] for b in h.blocks()] == [2048, 2048, 904]
    back = tensor.read_header(str(tmp_path / "a"))
    assert back.experiments == h.experiments and back.transform == "none"
    Xs = [tensor.read_block(str(tmp_path / "a"), c, b, h.experiments)[1]
          for c, b, _, _ in h.blocks()]
    X = np.concatenate(Xs)
    assert X.shape == (5000, 40) and np.isfinite(X).all()
    # arcsinh units of -log10 p-values: non-negative, mean a few tenths, sparse peaks of several
    assert X.min() == 0.0
    assert 0.15 < X.mean() < 0.6
    assert 2.5 < X.max() < 10
    assert np.percentile(X, 99) > 4 * np.median(X)
    for c, b, _, _ in h.blocks():
        assert (tmp_path / "a" / f"chrom={c}" / f"block={b:06d}.parquet").read_bytes() == \
            (tmp_path / "b" / f"chrom={c}" / f"block={b:06d}.parquet").read_bytes()


def test_synthetic_signal_is_low_rank():
    """Most of the (centred) variance lies in the generating rank."""
    cells, assays, observed = synthetic.roadmap_pattern()
    tracks = synthetic.synthetic_tracks(20000, cells, assays, observed[:60], rank=5)
    X = np.stack(list(tracks.values()), axis=1).astype(np.float64)
    s = np.linalg.svd(X - X.mean(axis=0), compute_uv=False)
    share = (s[:5] ** 2).sum() / (s ** 2).sum()
    assert share > 0.6


def test_new_cell_type_shares_the_tensors_genome(tmp_path):
    """A new sample for reference imputation: reproducible, on the tensor's latent states (its
    marks follow the tensor's same marks), and the tensor itself is unchanged by it."""
    cells, assays, observed = synthetic.roadmap_pattern()
    obs = observed[:40]
    h = synthetic.write_tensor(str(tmp_path / "t"), 5000, cells, assays, obs, block_bins=2048)
    marks = ["H3K4me3", "H3K27me3", "H3K4me1"]
    new = synthetic.new_cell_type_tracks(5000, cells, assays, obs, marks, block_bins=2048)
    again = synthetic.new_cell_type_tracks(5000, cells, assays, obs, marks, block_bins=2048)
    assert list(new) == marks
    for a in marks:
        assert new[a].dtype == np.float32 and new[a].shape == (5000,)
        assert np.array_equal(new[a], again[a])
        assert (new[a] >= 0).all()
    _, X = tensor.read_columns(str(tmp_path / "t"), "synth", 1, h.experiments)
    e = h.experiments.index(next(n for n in h.experiments if n.endswith(".H3K4me3")))
    r = np.corrcoef(new["H3K4me3"][2048:4096], X[:, e])[0, 1]
    assert 0.5 < r < 0.999
    other = synthetic.new_cell_type_tracks(5000, cells, assays, obs, marks, block_bins=2048,
                                           cell_seed=2)
    assert not np.array_equal(other["H3K4me3"], new["H3K4me3"])


@pytest.mark.slow
def test_roadmap_scale_extrapolates_extending_one_cell_type(tmp_path):
    """The Roadmap-scale bench extends its 127-cell-type reference with one new cell type of 3
    marks through extend's stages and extrapolates it to the whole genome."""
    res = bench.roadmap_scale(str(tmp_path), n_bins=4096, write_cell_types=1)
    assert res["extend_core_hours_per_cell_type"] > 0
    assert res["goals"]["extend_core_hours_per_cell_type"] == "<= 0.5"
    ext = res["extend"]
    assert ext["reference_cell_types"] == 127 and len(ext["marks"]) == 3
    assert ext["tracks_written"] == 21
    for stage in ("check", "ingest", "fit", "impute"):
        assert ext["seconds"][stage] > 0
        assert ext["core_hours_whole_genome"][stage] > 0
    assert res["extend_core_hours_per_cell_type"] == pytest.approx(
        sum(ext["core_hours_whole_genome"].values()), abs=0.01)
    assert not (tmp_path / "roadmap").exists() and not (tmp_path / "roadmap-extend").exists()


# --------------------------------------------------------------------------- imputation math
def _model(n_cell=4, n_assay=3, L=5, seed=0):
    rng = np.random.default_rng(seed)
    cells = [f"C{i}" for i in range(n_cell)]
    assays = [f"A{i}" for i in range(n_assay)]
    observed = [(c, a) for i, c in enumerate(cells) for j, a in enumerate(assays)
                if (i + j) % 3 != 0]
    return Model(cell_types=cells, assays=assays, mu=0.4, bC=rng.normal(size=n_cell) * 0.1,
                 bA=rng.normal(size=n_assay) * 0.1, C=rng.normal(size=(n_cell, L)),
                 A=rng.normal(size=(n_assay, L)), observed=observed)


@pytest.mark.parametrize("L", [3, 5])  # either side of impute.ROW_MAJOR_SOLVE_MAX_COLUMNS
def test_solve_block_fast_path_matches_the_per_pattern_solve(L):
    assert (L + 1 <= impute.ROW_MAJOR_SOLVE_MAX_COLUMNS) == (L == 3)
    m = _model(L=L)
    exps = [f"{c}.{a}" for c, a in m.observed]
    X = np.random.default_rng(1).random((500, len(exps))).astype(np.float32)
    GB = impute.solve_block(X, m, exps, 2.9, 0.0)
    Z, b = impute.model_arrays(m, exps)
    G, bG = solve_genome_factors(X.astype(np.float64) - b, Z, 2.9, 0.0, dtype=np.float64)
    assert GB.shape == (500, m.latent_factors + 1) and GB.T.flags.c_contiguous
    np.testing.assert_allclose(GB[:, :-1], G, atol=2e-5)
    np.testing.assert_allclose(GB[:, -1], bG, atol=2e-5)
    # with a missing entry the block takes the per-pattern path; the complete rows agree
    Xn = X.copy()
    Xn[3, 1] = np.nan
    GBn = impute.solve_block(Xn, m, exps, 2.9, 0.0)
    np.testing.assert_allclose(np.delete(GBn, 3, axis=0), np.delete(GB, 3, axis=0), atol=2e-5)
    assert not np.allclose(GBn[3], GB[3], atol=1e-4)
    # ... and the bins with missing entries are solved from their observed experiments only;
    # a bin with nothing observed gets zeros
    Xn[7] = np.nan
    GBn = impute.solve_block(Xn, m, exps, 2.9, 0.0)
    Gm, bGm = solve_genome_factors(Xn[[3]].astype(np.float64) - b, Z, 2.9, 0.0,
                                   dtype=np.float64)
    np.testing.assert_allclose(GBn[3, :-1], Gm[0], atol=2e-5)
    np.testing.assert_allclose(GBn[3, -1], bGm[0], atol=2e-5)
    assert (GBn[7] == 0).all() and np.isfinite(GBn).all()


def test_impute_values_is_the_model_prediction():
    m = _model()
    GB = np.random.default_rng(2).normal(size=(300, m.latent_factors + 1)).astype(np.float32)
    pairs = [(0, 0), (3, 2), (1, 1)]
    Y = impute.impute_values(GB, m, pairs)
    for t, (j, k) in enumerate(pairs):
        want = GB[:, :-1] @ (m.C[j] * m.A[k]) + GB[:, -1] + m.mu + m.bC[j] + m.bA[k]
        np.testing.assert_allclose(Y[:, t], want, rtol=1e-5, atol=1e-5)
        assert Y[:, t].flags["C_CONTIGUOUS"]  # a writer takes each track without a copy


def test_gemm_fraction_measures_the_real_functions():
    m = _model(n_cell=6, n_assay=5, L=8)
    exps = [f"{c}.{a}" for c, a in m.observed]
    X = np.random.default_rng(3).random((20000, len(exps))).astype(np.float32)
    g = probes.gemm_fraction(X, m, exps, 2.9, repeats=2)
    assert g["shape"] == {"bins": 20000, "experiments": len(exps), "factors_plus_bias": 9,
                          "tracks": 30}
    assert g["gflops"] == pytest.approx(2 * 20000 * 9 * (len(exps) + 30) / 1e9, abs=1e-3)
    assert g["fraction"] > 0 and g["predictd_seconds"] > 0
    assert set(g["layouts_seconds"]) == {"solve_row_major", "solve_col_major",
                                         "impute_row_major", "impute_col_major",
                                         "solve_row_major_transposed"}
    # the bound is the bare products' alone, each in its faster layout
    lay = g["layouts_seconds"]
    assert g["gemm_seconds"] == pytest.approx(
        min(lay["solve_row_major"], lay["solve_col_major"])
        + min(lay["impute_row_major"], lay["impute_col_major"]), abs=2e-5)


# --------------------------------------------------------------------------- measurement tools
@pytest.mark.slow
def test_peak_memory_sees_this_process_and_its_children():
    child = ("import numpy as np, time; a = np.ones(40_000_000); time.sleep(1.0); "
             "print(a.sum())")
    # children already running (a session's Spark JVM, when an earlier test started it)
    before = sum(measure.status_kb(p, "VmRSS:") for p in measure.descendants(os.getpid())) / 1024
    with measure.PeakMemory(interval=0.02) as mem:
        big = np.ones(30_000_000)  # 240 MB here
        subprocess.run([sys.executable, "-c", child], check=True, capture_output=True)
        del big
    assert mem.children_mb > before + 250  # the child's 320 MB array
    assert mem.self_mb > 200
    assert mem.total_mb >= mem.self_mb
    with measure.PeakMemory() as small:
        time.sleep(0.1)
    assert small.children_mb < before + 50
    if small.self_reset:  # the kernel let us reset the high-water mark
        assert small.self_mb < mem.self_mb


def test_fresh_memory_times_touching_new_pages(monkeypatch):
    """Both figures time real page faults: ``mb`` megabytes touched a page at a time, after an
    idle wait for the second."""
    import time
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)
    small = machine.fresh_memory(mb=4, idle_seconds=0.25, rounds=3)
    huge = allocator.thp_mode() in ("always", "madvise")
    # three rounds in each page size the kernel offers
    assert waits == [0.25] * (6 if huge else 3)
    assert small["mb"] == 4 and small["idle_seconds"] == 0.25
    assert (small["huge_pages"] is not None) == huge
    for pages in ("small_pages", "huge_pages")[:1 + huge]:
        fig = small[pages]
        assert 0 < fig["reused_ms_per_mb"] < 50 and 0 < fig["after_idle_ms_per_mb"] < 50


def test_blas_info_names_the_kernel_and_leaves_the_environment_alone():
    before = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")}
    info = machine.blas_info()
    assert info["library"]
    if "openblas" in info["library"].lower():
        assert info["kernel"] and info["threads"] >= 1
    assert info["OPENBLAS_CORETYPE"] == os.environ.get("OPENBLAS_CORETYPE")
    assert {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")} == before


# --------------------------------------------------------------------------- the benchmark
@pytest.mark.slow
@pytest.mark.spark
def test_bench_run_reports_every_figure(tmp_path, spark):
    _shared_or_skip()
    res = bench.run(str(tmp_path), n_bins=1 << 15, spark=True, config={"max_iterations": 4})
    for key in ("ingest_vs_pybigwig", "write_vs_pybigwig", "impute_gemm_fraction",
                "spark_overhead", "ingest_inprocess_vs_pybigwig", "bigwig_write_vs_pybigwig",
                "bigwig_read_vs_pybigwig", "extend_vs_run"):
        assert np.isfinite(res[key]) and res[key] > 0, key
    assert res["extend"]["tracks_written"] == 2 and len(res["extend"]["marks"]) == 3
    assert res["data"]["bins"] == 1 << 15 and res["data"]["tracks"] == 20
    for stage in ("pybigwig_read", "bigwig_read", "ingest_inprocess", "train_inprocess",
                  "solve_inprocess", "write_inprocess", "pybigwig_write", "bigwig_write",
                  "ingest_spark", "train_spark", "solve_spark", "write_spark"):
        assert res["seconds"][stage] > 0, stage
        assert res["memory_mb"][stage]["total_mb"] > 50, stage
    assert res["throughput"]["write_inprocess_bins_per_s"] > 0
    assert res["spark"]["startup_seconds"] >= 0  # 0-ish here: the session's context is reused
    assert res["machine"]["blas"]["library"]
    # Spark and in-process runs of the same job give the same model and tracks
    assert res["spark"]["model_max_abs_diff_vs_inprocess"] < 1e-9
    assert res["spark"]["tracks_max_abs_diff_vs_inprocess"] < 1e-4
    # the bare-writer figure wrote the very arrays the pyBigWig limit wrote
    from predictd.bigwig import read_binned
    lim = tmp_path / "limits"
    written = sorted(lim.glob("*.predictd.bw"))
    assert len(written) == 20
    for ours in written[:3]:
        theirs = lim / ours.name.replace(".predictd.bw", ".bw")
        (chrom, length), = pyBigWig.open(str(theirs)).chroms().items()
        np.testing.assert_array_equal(read_binned(str(ours), chrom, length),
                                      read_binned(str(theirs), chrom, length))
    json.dumps(res)  # JSON-ready


def test_bench_cli_rejects_bad_worker_counts():
    from predictd.cli import bench as _  # noqa: F401 - registers the command
    from predictd.cli.main import cli
    r = CliRunner().invoke(cli, ["bench", "--workers", "one,two"])
    assert r.exit_code == 2
    assert "--workers" in r.output and len(r.output.strip().splitlines()) == 1


def test_scale_out_reports_each_figures_median_over_its_repeats():
    from predictd.bench.scaleout import _median_run

    def run(train, solve, write, equal=True):
        return {"train_seconds": train, "solve_seconds": solve, "write_seconds": write,
                "train_plus_impute_seconds": train + solve + write, "equal_to_local": equal,
                "iterations": 60}

    reps = [run(3.0, 0.5, 9.0), run(2.5, 0.7, 7.0), run(4.0, 0.4, 8.0)]
    med = _median_run(reps)
    assert (med["train_seconds"], med["solve_seconds"], med["write_seconds"]) == (3.0, 0.5, 8.0)
    # the total's own median (12.4 of 10.2, 12.4, 12.5), not the sum of the medians (11.5)
    assert med["train_plus_impute_seconds"] == 12.4
    assert med["repeats"] == reps and med["equal_to_local"]
    assert not _median_run([*reps[:2], run(1, 1, 1, equal=False)])["equal_to_local"]
    assert "repeats" not in _median_run(reps[:1])


def test_scale_out_speedup_is_the_median_of_each_repeats_own():
    from predictd.bench.scaleout import paired_speedups

    def run(t):
        return {"train_seconds": t, "solve_seconds": 1.0, "write_seconds": 2 * t,
                "train_plus_impute_seconds": 1.0 + 3 * t}

    # the machine slows down between the pairs: each pair's ratio is 2, or 1.5 once
    fewer, more = [run(2.0), run(4.0), run(3.0)], [run(1.0), run(2.0), run(2.0)]
    med, pairs = paired_speedups(fewer, more)
    assert [p["train_seconds"] for p in pairs] == [2.0, 2.0, 1.5]
    assert med["train_seconds"] == 2.0 and med["write_seconds"] == 2.0
    assert med["solve_seconds"] == 1.0
    # totals 7/4, 13/7, 10/7: the middle one
    assert med["train_plus_impute_seconds"] == 1.75


def test_scale_out_in_a_child_process_fails_with_its_one_line(tmp_path, capfd):
    with pytest.raises(PredictdError, match="scale-out benchmark failed"):
        bench.scale_out_in_child(str(tmp_path), [1, 2], repeat=0)
    err = capfd.readouterr().err
    assert "predictd: error: repeat 0: must be at least 1" in err and "Traceback" not in err


def test_bench_repeat_must_be_positive():
    from predictd.cli import bench as _  # noqa: F401 - registers the command
    from predictd.cli.main import cli
    r = CliRunner().invoke(cli, ["bench", "--workers", "1,2", "--repeat", "0"])
    assert r.exit_code == 2 and "--repeat" in r.output


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.cluster
def test_scale_out_on_a_standalone_cluster_equals_local_mode(tmp_path):
    """The same train + impute job on a 2-worker standalone cluster gives local mode's model
    and tracks (the job runs in child processes: one SparkContext per process; the whole
    scale-out in a fresh process of its own, as ``predictd bench --workers`` runs it)."""
    _shared_or_skip()
    res = bench.scale_out_in_child(str(tmp_path), [2], n_bins=1 << 14,
                                   config={"max_iterations": 4})
    run2 = res["runs"]["workers_2"]
    assert run2["default_parallelism"] == 2
    assert run2["equal_to_local"], run2
    assert run2["solve_bins_per_s"] > 0 and run2["write_tracks_per_s"] > 0
    # the machine's load around the timed work, to judge the figures by
    assert len(run2["load_average"]) == 2 and min(run2["load_average"]) >= 0
    assert res["runs"]["local"]["master"] == "local[*]"
    # what new processes pay for memory here, to judge the speed-up by
    fresh = res["fresh_memory"]
    for pages in ("small_pages", "huge_pages"):
        if fresh[pages] is not None:  # huge pages: where the kernel offers them
            assert fresh[pages]["reused_ms_per_mb"] > 0
            assert fresh[pages]["after_idle_ms_per_mb"] > 0


def test_write_tracks_only_writes_the_tracks_asked_for(tmp_path):
    # the roadmap-scale benchmark writes a subset of the 3,048 tracks through the real path
    from predictd.config import Config
    m = _model()
    root = str(tmp_path / "tensor")
    header = synthetic.write_tensor(root, 5000, m.cell_types, m.assays, m.observed,
                                    block_bins=2048)
    cfg = Config(block_bins=2048, transform="none")
    gf = str(tmp_path / "gf")
    impute.solve_genome(None, header, root, gf, m, cfg)
    names = m.track_names()
    done = impute.write_tracks(None, header, str(tmp_path / "out"), gf, m, cfg, only=[1, 7])
    assert sorted(done) == sorted([names[1], names[7]])
    assert sorted(p.name for p in (tmp_path / "out" / "tracks").iterdir()) == sorted(
        f"{names[i]}.imputed.bw" for i in (1, 7))


def test_bench_set_is_for_the_roadmap_scale_and_validated():
    from predictd.cli import bench as _  # noqa: F401 - registers the command
    from predictd.cli.main import cli
    r = CliRunner().invoke(cli, ["bench", "--set", "stack_hinges=false"])
    assert r.exit_code == 2 and "--roadmap-scale" in r.output
    r = CliRunner().invoke(cli, ["bench", "--roadmap-scale", "--set", "stack_hinge=true"])
    assert r.exit_code != 0 and "stack_hinge" in r.output


@pytest.mark.slow
def test_roadmap_scale_with_a_config_override(tmp_path):
    """``--set`` reaches the model the Roadmap-scale bench trains, and its JSON says so."""
    from predictd.cli import bench as _  # noqa: F401 - registers the command
    from predictd.cli.main import cli
    r = CliRunner().invoke(cli, ["bench", "--roadmap-scale", "--bins", "4096",
                                 "--write-cell-types", "1", "--json", "--workdir",
                                 str(tmp_path), "--set", "stack_hinges=false"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["config"]["stack_hinges"] is False
    assert res["extrapolated_whole_genome"]["impute_core_hours"] > 0


def test_write_limit_times_the_write_split_across_side_by_side_processes(tmp_path):
    # the ceiling a cluster's write speed-up is judged against: the same tracks written by 1
    # and by 2 plain processes at once (the children start together, after a warm-up pass)
    from predictd.bench.scaleout import write_limit
    from predictd.config import Config
    m = _model()
    root = str(tmp_path / "tensor")
    header = synthetic.write_tensor(root, 20000, m.cell_types, m.assays, m.observed,
                                    block_bins=4096)
    job = str(tmp_path / "job")
    m.save(layout.model_dir(job))
    impute.solve_genome(None, header, root, os.path.join(job, "gf"), m,
                        Config(block_bins=4096))
    work = str(tmp_path / "limit")
    lim = write_limit(job, root, {"transform": "none"}, len(m.track_names()), 1, 2, work)
    assert lim["fewer_seconds"] > 0 and lim["more_seconds"] > 0
    # (the seconds are rounded to the millisecond; this job takes a few tens of them)
    assert lim["speedup"] == pytest.approx(lim["fewer_seconds"] / lim["more_seconds"], rel=0.1)
    assert not os.path.exists(work)  # the children's tracks are not kept
    with pytest.raises(PredictdError, match="write-limit child failed"):
        write_limit(str(tmp_path / "no-job"), root, {}, 4, 1, 2, work)


def test_bench_inputs_in_a_relative_workdir_are_found_through_the_manifest(tmp_path,
                                                                           monkeypatch):
    """``predictd bench --workdir scratch`` (a relative directory): the manifest's rows must
    name bigWigs that exist, not paths relative to the manifest's own directory again."""
    from predictd.bench.inputs import write_inputs
    from predictd.manifest import read_manifest
    monkeypatch.chdir(tmp_path)
    tracks = {"E003.H3K4me3": np.linspace(0, 2, 4096, dtype=np.float32)}
    manifest, sizes, paths = write_inputs(tracks, os.path.join("scratch", "inputs"))
    assert all(os.path.isabs(p) and os.path.exists(p) for p in (manifest, sizes, *paths))
    (row,) = read_manifest(manifest)
    assert os.path.exists(row.uri), row.uri
