"""The per-bin uncertainty: its pure functions (variance fit, calibration scale, delta method,
calibration figures) on synthetic data, and ``--uncertainty`` through run and extend."""

import json
import os

import numpy as np
import pytest

from predictd.solvers import stacking
from predictd.solvers import uncertainty as unc


def _heteroscedastic(n, seed=0):
    """Bins whose error sd grows with the predicted level and the cell types' spread."""
    rng = np.random.default_rng(seed)
    yhat = rng.gamma(1.0, 1.0, n)
    avg = yhat + rng.normal(0, 0.3, n)
    spread2 = rng.gamma(1.0, 0.2, n)
    Z = unc.variance_features(yhat, avg, spread2)
    beta = np.array([0.01, 0.0, 0.05, 0.2, 0.5])
    r = rng.normal(0, 1, n) * np.sqrt(beta @ Z)
    return Z, r, beta


def test_variance_features_layout_and_missing_values():
    Z = unc.variance_features(np.array([-1.0, 2.0, 3.0]), np.array([0.0, np.nan, 1.0]),
                              np.array([0.5, 0.25, np.nan]))
    assert Z.shape == (unc.N_FEATURES, 3)
    np.testing.assert_array_equal(Z[0], 1.0)
    np.testing.assert_array_equal(Z[1], [0.0, 2.0, 3.0])          # ŷ₊
    np.testing.assert_array_equal(Z[2], [0.0, 4.0, 9.0])          # ŷ₊²
    np.testing.assert_array_equal(Z[3], [1.0, 0.0, 4.0])          # (ŷ − a)², 0 without a
    np.testing.assert_array_equal(Z[4], [0.5, 0.25, 0.0])         # s², 0 without


def test_other_cell_moments_leave_the_own_value_out():
    # an assay in 3 cell types at 2 bins: values (1, 2, 4) and (3, NaN, 5)
    X = np.array([[1.0, 2.0, 4.0], [3.0, np.nan, 5.0]])
    tot, tot2, cnt = np.nansum(X, 1), np.nansum(X * X, 1), (~np.isnan(X)).sum(1)
    mean, var = unc.other_cell_moments(tot, tot2, cnt, X[:, 0])
    np.testing.assert_allclose(mean, [3.0, 5.0])
    np.testing.assert_allclose(var, [1.0, 0.0])
    mean, var = unc.other_cell_moments(tot, tot2, cnt, np.array([np.nan, np.nan]))
    np.testing.assert_allclose(mean, [7 / 3, 4.0])
    np.testing.assert_allclose(var, [np.var([1, 2, 4]), 1.0])
    # nobody else: NaN
    m, v = unc.other_cell_moments(np.array([2.0]), np.array([4.0]), np.array([1.0]),
                                  np.array([2.0]))
    assert np.isnan(m).all() and np.isnan(v).all()


def test_fit_variance_recovers_a_known_variance_model_from_summed_shards():
    Z, r, beta = _heteroscedastic(200_000)
    parts = [unc.residual_moments(Z[:, s:s + 50_000], r[s:s + 50_000])
             for s in range(0, r.size, 50_000)]
    whole = unc.residual_moments(Z, r)
    summed = unc.add_moments(parts)
    np.testing.assert_allclose(summed["zz"], whole["zz"], rtol=1e-10)
    fit = unc.fit_variance(summed)
    assert (fit >= 0).all()
    # the level terms trade off against each other; the predicted variance is what counts
    np.testing.assert_allclose(unc.predictive_variance(Z, fit).mean(), (beta @ Z).mean(),
                               rtol=0.05)
    np.testing.assert_allclose(fit[[3, 4]], beta[[3, 4]], rtol=0.15)


def test_fit_variance_leaves_a_quantity_that_is_always_zero_out():
    Z, r, _ = _heteroscedastic(20_000, seed=3)
    Z[4] = 0.0   # one other cell type: no spread in training
    fit = unc.fit_variance(unc.residual_moments(Z, r))
    assert fit[4] == 0.0 and np.isfinite(fit).all()
    assert unc.fit_variance(unc.residual_moments(Z[:, :50], r[:50])) is None  # too few bins


def test_calibration_scale_makes_the_interval_hold_90_percent():
    Z, r, beta = _heteroscedastic(100_000, seed=1)
    wrong = beta * 4.0            # a variance model 4× too wide: the scale brings it back
    h = unc.ratio_histogram(r, unc.predictive_variance(Z, wrong))
    assert h.sum() == r.size
    s = unc.calibration_scale(h)
    np.testing.assert_allclose(s, 0.5, rtol=0.04)
    sd = s * np.sqrt(unc.predictive_variance(Z, wrong))
    cover = np.mean(np.abs(r) <= unc.Z_90 * sd)
    assert 0.895 <= cover <= 0.93
    # histograms of shards add up
    h2 = unc.ratio_histogram(r[:500], unc.predictive_variance(Z[:, :500], wrong)) + \
        unc.ratio_histogram(r[500:], unc.predictive_variance(Z[:, 500:], wrong))
    np.testing.assert_array_equal(h, h2)
    assert unc.calibration_scale(np.zeros_like(h)) == 1.0


def test_ratio_histogram_zero_sd():
    h = unc.ratio_histogram(np.array([0.0, 1.0]), np.array([0.0, 0.0]))
    assert h[0] == 1 and h[-1] == 1


def test_output_sd_is_the_delta_method_of_sinh():
    y, sd = np.array([0.0, 1.0, 3.0]), np.array([0.1, 0.2, 0.01])
    np.testing.assert_allclose(unc.output_sd(y, sd, "arcsinh"), np.cosh(y) * sd, rtol=1e-6)
    # matches the numerical derivative of the inverse transform
    eps = 1e-4
    num = (np.sinh(y + eps) - np.sinh(y - eps)) / (2 * eps) * sd
    np.testing.assert_allclose(unc.output_sd(y, sd, "arcsinh"), num, rtol=1e-6)
    np.testing.assert_allclose(unc.output_sd(y, sd, "none"), sd, rtol=1e-6)
    with pytest.raises(ValueError):
        unc.output_sd(y, sd, "log")


def test_calibration_figures_on_synthetic_tracks():
    rng = np.random.default_rng(5)
    n = 50_000
    sd = rng.gamma(2.0, 0.5, n)
    yhat = rng.normal(0, 1, n)
    y = yhat + rng.normal(0, 1, n) * sd
    y[:10] = np.nan   # not observed: not counted
    c = unc.calibration(y, yhat, sd)
    assert c["bins"] == n - 10
    assert 0.89 <= c["coverage"] <= 0.91          # normal errors: 90 %
    assert c["spearman"] > 0.3                    # the sd ranks the errors
    # an sd unrelated to the errors ranks nothing and, too narrow, covers less
    c2 = unc.calibration(y, yhat, rng.permutation(sd) * 0.5)
    assert abs(c2["spearman"]) < 0.02 and c2["coverage"] < 0.8


def test_spearman_with_ties_matches_a_reference():
    from scipy.stats import spearmanr
    rng = np.random.default_rng(2)
    a = rng.integers(0, 5, 1000).astype(float)
    b = a + rng.integers(0, 3, 1000)
    assert unc.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert np.isnan(unc.spearman(np.ones(5), np.arange(5.0)))


def test_residual_stats_and_fit_on_a_toy_block():
    """Three cell types with one assay each beside a shared one: the honest residual pass and
    the per-target fit give finite, non-negative models; shard sums equal the whole."""
    rng = np.random.default_rng(0)
    n = 4000
    base = rng.gamma(1.0, 1.0, (n, 2))
    ec = np.array([0, 0, 1, 1, 2, 2])
    ea = np.array([0, 1, 0, 1, 0, 1])
    X = np.concatenate([base + rng.normal(0, 0.2, (n, 2)) for _ in range(3)], axis=1)
    observed = np.ones((3, 2), bool)
    stats = stacking.stack_stats(X, ec, ea, 3, 2)
    W = stacking.fit_stack(stats, observed)
    rows = np.zeros(n, bool)
    rows[::2] = True
    mom = stacking.residual_stats(X, ec, ea, 2, W, rows=rows)
    halves = [stacking.residual_stats(X[s:s + n // 2], ec, ea, 2, W,
                                      rows=rows[s:s + n // 2]) for s in (0, n // 2)]
    summed = stacking.sum_residual_stats(halves)
    np.testing.assert_allclose(summed["zz"], mom["zz"], rtol=1e-9)
    assert (mom["n"] == n // 2).all()
    B = stacking.fit_uncertainty(mom, None, ec, ea, observed, leave_out=True)
    hist = stacking.residual_stats(X, ec, ea, 2, W, rows=rows, betas=B)
    assert hist["hist"].sum(axis=1).tolist() == [n // 2] * 6
    V = stacking.fit_uncertainty(mom, hist, ec, ea, observed)
    assert V.shape == (3, 2, unc.N_FEATURES) and (V >= 0).all()
    # a target's model never uses its own experiment: changing it leaves V[j, k] unchanged
    mom2 = {k: v.copy() for k, v in mom.items()}
    mom2["zr"][0] *= 10.0
    V2 = stacking.fit_uncertainty(mom2, hist, ec, ea, observed)
    np.testing.assert_array_equal(V2[0, 0], V[0, 0])


# --------------------------------------------------------------------------- through the CLI
SMALL = ("--set", "latent_factors=3", "--set", "max_iterations=4", "--set",
         "training_fraction=0.3", "--set", "block_bins=1024", "--set", "partitions=2",
         "--set", "stack_sample=0.5")


def _invoke(*args):
    from click.testing import CliRunner

    from predictd.cli import extend as _e, stages as _s  # noqa: F401 - registers
    from predictd.cli.main import cli
    return CliRunner().invoke(cli, [str(a) for a in args])


def _sha(path):
    import hashlib
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _check_uncertainty_track(imputed, sd_path):
    """The uncertainty bigWig opens, has the imputed track's chromosomes and coverage, and
    holds finite standard deviations ≥ 0, not all 0."""
    import pyBigWig
    a, b = pyBigWig.open(str(imputed)), pyBigWig.open(str(sd_path))
    try:
        assert b.isBigWig() and b.chroms() == a.chroms()
        seen_positive = False
        for chrom, length in a.chroms().items():
            va = np.array(a.values(chrom, 0, length), dtype=np.float64)
            vb = np.array(b.values(chrom, 0, length), dtype=np.float64)
            np.testing.assert_array_equal(np.isnan(va), np.isnan(vb))
            vb = vb[~np.isnan(vb)]
            assert np.isfinite(vb).all() and (vb >= 0).all()
            seen_positive |= bool((vb > 0).any())
        assert seen_positive
    finally:
        a.close()
        b.close()


@pytest.mark.slow
def test_run_with_uncertainty_writes_valid_sd_tracks_and_leaves_the_imputation_unchanged(
        tmp_path, write_small_run_inputs):
    from predictd import layout
    from predictd.download import list_outputs
    inp = write_small_run_inputs(tmp_path / "in")
    for out, extra in (("plain", ()), ("sd", ("--uncertainty",))):
        r = _invoke("run", "-m", inp.manifest, "-g", inp.sizes, "-o", tmp_path / out,
                    "--no-spark", *SMALL, *extra)
        assert r.exit_code == 0, r.output
    names = [f"{c}.{a}" for c in "ABC" for a in "xy"]
    for name in names:
        imputed = layout.track_file(str(tmp_path / "sd"), name)
        # the imputed tracks are the same bits with or without --uncertainty
        assert _sha(imputed) == _sha(layout.track_file(str(tmp_path / "plain"), name))
        assert not os.path.exists(layout.uncertainty_file(str(tmp_path / "plain"), name))
        _check_uncertainty_track(imputed, layout.uncertainty_file(str(tmp_path / "sd"), name))
    # the track index lists them as uncertainty tracks; the hub leaves them out
    doc = json.loads((tmp_path / "sd" / "tracks.json").read_text())
    kinds = sorted((t["path"], t.get("kind", "imputed")) for t in doc["tracks"])
    assert len(kinds) == 12
    assert ("tracks/C.y.uncertainty.bw", "uncertainty") in kinds
    listed = list_outputs(str(tmp_path / "sd"))
    assert {f.name for f in listed if f.kind == "uncertainty"} == \
        {f"{n}.uncertainty" for n in names}
    from predictd.hub import imputed_tracks
    assert len(imputed_tracks(str(tmp_path / "sd"))) == 6
    # a run killed while writing resumes: the missing uncertainty track alone is written,
    # the same bits
    before = {n: _sha(layout.uncertainty_file(str(tmp_path / "sd"), n)) for n in names}
    os.remove(layout.uncertainty_file(str(tmp_path / "sd"), "A.x"))
    os.remove(layout.marker_file(str(tmp_path / "sd"), "impute"))
    r = _invoke("run", "-m", inp.manifest, "-g", inp.sizes, "-o", tmp_path / "sd",
                "--no-spark", *SMALL, "--uncertainty")
    assert r.exit_code == 0, r.output
    assert {n: _sha(layout.uncertainty_file(str(tmp_path / "sd"), n)) for n in names} == before


@pytest.mark.slow
def test_folds_with_uncertainty_report_calibration(tmp_path, write_small_run_inputs):
    inp = write_small_run_inputs(tmp_path / "in")
    r = _invoke("run", "-m", inp.manifest, "-g", inp.sizes, "-o", tmp_path / "cv",
                "--no-spark", *SMALL, "--folds", "2", "--set", "ensemble_size=2",
                "--set", "cp_reference=false", "--uncertainty")
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "cv" / "report" / "calibration.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:5] == ["cell_type", "assay", "bins", "coverage", "spearman"]
    assert len(lines) == 1 + 6   # every observed track
    rhos = []
    for line in lines[1:]:
        cov, rho = map(float, line.split("\t")[3:5])
        # Spearman is NaN where the sd is one constant: this toy's 2 folds impute A's and
        # B's tracks as constants, and B's sd is constant too
        assert 0.0 < cov <= 1.0 and (-1.0 <= rho <= 1.0 or np.isnan(rho))
        rhos.append(rho)
    assert np.isfinite(rhos).sum() >= 4 and np.nanmin(rhos) > 0.3


@pytest.mark.slow
def test_extend_with_uncertainty(tmp_path, write_small_run_inputs):
    from predictd import layout
    inp = write_small_run_inputs(tmp_path / "in")
    lines = open(inp.manifest).read().splitlines()
    (tmp_path / "in" / "ref.tsv").write_text("\n".join(
        [lines[0]] + [x for x in lines[1:] if x.split("\t")[0] in "AB"]) + "\n")
    (tmp_path / "in" / "new.tsv").write_text(f"{lines[0]}\nD\tx\tC.x.bw\n")
    r = _invoke("run", "-m", tmp_path / "in" / "ref.tsv", "-g", inp.sizes, "-o",
                tmp_path / "ref", "--no-spark", *SMALL)
    assert r.exit_code == 0, r.output
    for out, extra in (("plain", ()), ("sd", ("--uncertainty",))):
        r = _invoke("extend", "-r", tmp_path / "ref", "-m", tmp_path / "in" / "new.tsv",
                    "-o", tmp_path / out, "--no-spark", *extra)
        assert r.exit_code == 0, r.output
    imputed = layout.track_file(str(tmp_path / "sd"), "D.y")
    assert _sha(imputed) == _sha(layout.track_file(str(tmp_path / "plain"), "D.y"))
    assert not os.path.exists(layout.uncertainty_file(str(tmp_path / "plain"), "D.y"))
    _check_uncertainty_track(imputed, layout.uncertainty_file(str(tmp_path / "sd"), "D.y"))
    # a held-out track: its calibration is reported
    (tmp_path / "in" / "new_xy.tsv").write_text(f"{lines[0]}\nD\tx\tC.x.bw\nD\ty\tC.y.bw\n")
    r = _invoke("extend", "-r", tmp_path / "ref", "-m", tmp_path / "in" / "new_xy.tsv",
                "-o", tmp_path / "held", "--holdout", "D:y", "--no-spark", "--uncertainty")
    assert r.exit_code == 0, r.output
    rows = (tmp_path / "held" / "report" / "calibration.tsv").read_text().splitlines()
    assert [x.split("\t")[:2] for x in rows[1:]] == [["D", "y"]]
    cov, rho = map(float, rows[1].split("\t")[3:5])
    assert 0.5 < cov <= 1.0 and rho > 0.0


def test_uncertainty_needs_the_stacked_regression(tmp_path, write_small_run_inputs):
    inp = write_small_run_inputs(tmp_path / "in")
    r = _invoke("run", "-m", inp.manifest, "-g", inp.sizes, "-o", tmp_path / "o",
                "--no-spark", *SMALL, "--uncertainty", "--set", "stack=false")
    assert r.exit_code == 2
    assert "'uncertainty': needs stack = true" in r.output
    assert not (tmp_path / "o").exists()   # refused before anything is written


def test_calibration_scale_has_an_assay_and_a_cell_type_effect():
    """Cell type 2's errors are twice as wide in assay 1: its assay-0 target is widened by
    that factor, never by its own assay-0 errors."""
    rng = np.random.default_rng(4)
    ec, ea = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 0, 1, 0, 1])
    Z, r, _ = _heteroscedastic(20_000)
    mom = unc.residual_moments(Z, r)
    moments = {"zz": np.stack([mom["zz"]] * 6), "zr": np.stack([mom["zr"]] * 6),
               "n": np.full(6, mom["n"])}
    u = np.abs(rng.normal(size=(6, 50_000)))
    u[5] *= 2.0                      # cell type 2, assay 1
    hist = {"hist": np.stack([unc.ratio_histogram(x, np.ones_like(x)) for x in u])}
    V = stacking.fit_uncertainty(moments, hist, ec, ea, np.ones((3, 2), bool), scale_prior=0)
    ratio = V[2, 0].sum() / V[1, 0].sum()   # the same β, scaled
    # cell 2's effect is log 2 − 0 = log 2; cell 1's is 0 − (0 + log 2)/2: s ratio 2^1.5
    assert ratio == pytest.approx(2.0 ** 3, rel=0.1)
    # with the default assay prior (2 pseudo-experiments at the other cell types' mean log
    # scale): cell 1's assay effects are (log 2 + 2 · log 2 / 4) / 4 (assay 1) and
    # (0 + 2 · log 2 / 4) / 4 (assay 0), so its log s is −0.25 log 2; cell 2's stays log 2
    Vd = stacking.fit_uncertainty(moments, hist, ec, ea, np.ones((3, 2), bool))
    assert Vd[2, 0].sum() / Vd[1, 0].sum() == pytest.approx(2.0 ** 2.5, rel=0.1)
    # the widened experiment (2, 1) does not widen its own target beyond the assay's others
    u[4] *= 3.0                      # cell type 2, assay 0: its own errors never count
    hist2 = {"hist": np.stack([unc.ratio_histogram(x, np.ones_like(x)) for x in u])}
    V2 = stacking.fit_uncertainty(moments, hist2, ec, ea, np.ones((3, 2), bool), scale_prior=0)
    np.testing.assert_allclose(V2[2, 0], V[2, 0])


def test_the_variance_prior_matters_with_few_cell_types_and_fades_with_many():
    """Assay 0's errors are 3× as wide as assay 1's. With one other cell type, a target's β
    is pulled toward the mean experiment (8 pseudo-experiments: (9 + 8 · 5) / 9 of the unit
    β instead of 9); with a hundred others the prior barely moves it."""
    Z, r, _ = _heteroscedastic(5000)
    mom = unc.residual_moments(Z, r)
    beta0 = unc.fit_variance(mom)
    for n_cell, expect in ((2, 49.0 / 9.0), (101, 940.0 / 108.0)):
        ec, ea = np.repeat(np.arange(n_cell), 2), np.tile([0, 1], n_cell)
        moments = {"zz": np.stack([mom["zz"]] * ec.size),
                   "zr": np.stack([mom["zr"] * (9.0 if a == 0 else 1.0) for a in ea]),
                   "n": np.full(ec.size, mom["n"])}
        observed = np.ones((n_cell, 2), bool)
        V0 = stacking.fit_uncertainty(moments, None, ec, ea, observed, prior=0)
        V = stacking.fit_uncertainty(moments, None, ec, ea, observed)
        np.testing.assert_allclose(V0[0, 0], 9.0 * beta0, rtol=1e-6)
        np.testing.assert_allclose(V[0, 0], expect * beta0, rtol=1e-6)
        # the leave-out step (what standardises each experiment's errors) is shrunk alike
        B = stacking.fit_uncertainty(moments, None, ec, ea, observed, leave_out=True)
        np.testing.assert_allclose(B[0], expect * beta0, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.spark
def test_uncertainty_under_spark_gives_the_same_bits(tmp_path, write_small_run_inputs, spark):
    inp = write_small_run_inputs(tmp_path / "in")
    for out, extra in (("local", ("--no-spark",)), ("spark", ("--master", spark.master))):
        r = _invoke("run", "-m", inp.manifest, "-g", inp.sizes, "-o", tmp_path / out,
                    *SMALL, "--uncertainty", *extra)
        assert r.exit_code == 0, r.output
    files = sorted(p.name for p in (tmp_path / "local" / "tracks").iterdir())
    assert sum(f.endswith(".uncertainty.bw") for f in files) == 6
    for f in files:
        assert _sha(tmp_path / "local" / "tracks" / f) == _sha(tmp_path / "spark" / "tracks" / f)
    a = np.load(tmp_path / "local" / "model" / "factors.npz")
    b = np.load(tmp_path / "spark" / "model" / "factors.npz")
    np.testing.assert_array_equal(a["stack_variance"], b["stack_variance"])
