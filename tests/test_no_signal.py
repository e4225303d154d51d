"""No signal from nothing: bins where no training experiment has signal (assembly gaps,
unmappable regions) are imputed as 0 in every track, not as the model's intercepts."""

from __future__ import annotations

import glob
import os

import numpy as np
import pyarrow.parquet as pq
import pyBigWig
import pytest

from predictd import impute, layout, pipeline, tensor
from predictd.config import Config
from predictd.model import Model

NAN = np.nan


def test_no_signal_is_every_input_zero_or_missing():
    X = np.array([[0.0, 0.0, 0.0],
                  [0.0, NAN, 0.0],
                  [NAN, NAN, NAN],
                  [0.0, 1e-7, 0.0],
                  [-0.5, 0.0, NAN],
                  [2.0, 3.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(impute.no_signal(X),
                                  [True, True, True, False, False, False])
    assert impute.no_signal(np.zeros((0, 3))).shape == (0,)
    with pytest.raises(ValueError, match="bins × experiments"):
        impute.no_signal(np.zeros(4))


def _model(rng, cells=("A", "B"), assays=("x", "y"), L=2):
    return Model(cell_types=list(cells), assays=list(assays), mu=0.3,
                 bC=rng.normal(size=len(cells)), bA=rng.normal(size=len(assays)),
                 C=rng.normal(size=(len(cells), L)), A=rng.normal(size=(len(assays), L)),
                 observed=[("A", "x"), ("A", "y"), ("B", "x")])


def test_model_values_are_zero_exactly_where_the_inputs_are_empty():
    rng = np.random.default_rng(0)
    model = _model(rng)
    names = ["A.x", "A.y", "B.x", "B.y"]  # B.y is the held-out truth, not an input
    X = rng.gamma(1.0, 1.0, size=(50, 4)).astype(np.float32)
    X[10:20, :3] = 0.0
    X[12, 1] = np.nan
    X[30:35, :3] = np.nan
    X[15, 3] = 4.0  # the held-out track's own signal must not count
    GB = impute.solve_block(X[:, :3], model, names[:3], 1.0, 0.0)
    pairs = [(0, 0), (0, 1), (1, 0), (1, 1)]
    Y = impute.model_values(model, GB, pairs, (names, X))
    raw = impute.impute_values(GB, model, pairs)
    empty = np.zeros(50, bool)
    empty[10:20] = empty[30:35] = True
    assert (Y[empty] == 0).all()
    np.testing.assert_array_equal(Y[~empty], raw[~empty])
    assert (raw[empty] != 0).all()  # what the intercepts alone would have painted
    # the stored mask gives the same values without the block
    np.testing.assert_array_equal(impute.model_values(model, GB, pairs, empty=empty), Y)


def test_the_mask_is_stored_with_the_genome_factors(tmp_path):
    rng = np.random.default_rng(1)
    GB = rng.normal(size=(6, 3)).astype(np.float32)
    empty = np.array([1, 0, 0, 1, 1, 0], bool)
    uri = str(tmp_path / "block.parquet")
    impute.write_gf(uri, GB, empty=empty)
    assert pq.read_schema(uri).names == ["g0", "g1", "bG", impute.NO_SIGNAL_COLUMN]
    got, sums, got_empty = impute.read_gf_parts(uri)
    np.testing.assert_array_equal(got, GB)
    assert sums is None
    np.testing.assert_array_equal(got_empty, empty)
    np.testing.assert_array_equal(impute.read_gf(uri), GB)
    impute.write_gf(uri, GB)  # genome factors solved without the mask
    assert impute.read_gf_parts(uri)[2] is None


def _derived(src: str, dest: str, scale: float, shift: int, length: int) -> None:
    """A track of the real file's intervals, values scaled and positions shifted right."""
    bw = pyBigWig.open(src)
    iv = np.array(bw.intervals("chr22"), dtype=np.float64)
    bw.close()
    starts = iv[:, 0].astype(np.int64) + shift
    ends = np.minimum(iv[:, 1].astype(np.int64) + shift, length)
    keep = starts < ends
    out = pyBigWig.open(dest, "w")
    out.addHeader([("chr22", length)])
    out.addEntries(["chr22"] * int(keep.sum()), starts[keep].tolist(), ends=ends[keep].tolist(),
                   values=(iv[keep, 2] * scale).tolist())
    out.close()


@pytest.mark.slow
def test_real_assembly_gap_is_zero_in_every_track(shared, tmp_path):
    """hg19 chr22 from a real ENCODE bigWig: its first ~16.1 Mbp (the short arm, an assembly
    gap) are zeros and its last ~80 kb absent in every input. Every track — observed or never
    observed — is 0 there, and no other bin changes."""
    real = str(shared / "real_bigwigs" / "ENCFF826FLP.bw")
    length = 51_304_566
    sizes = tmp_path / "chr22.sizes"
    sizes.write_text(f"chr22\t{length}\n")
    b_sig, a_two = str(tmp_path / "B.sig.bw"), str(tmp_path / "A.two.bw")
    _derived(real, b_sig, 0.5, 2_000, length)
    _derived(real, a_two, 2.0, 10_000, length)
    manifest = tmp_path / "m.tsv"
    # B.two is never observed
    manifest.write_text("cell_type\tassay\turi\n"
                        f"A\tsig\t{real}\nB\tsig\t{b_sig}\nA\ttwo\t{a_two}\n")
    out = str(tmp_path / "out")
    cfg = Config(latent_factors=2, training_fraction=0.01, max_iterations=4,
                 block_bins=262_144, stack=False)
    run = pipeline.open_run(str(manifest), str(sizes), out, cfg, progress=False)
    pipeline.run_all(run, stages=("ingest", "train", "impute"))
    model = run.load_model()
    header = tensor.read_header(run.tensor_root)
    gf = os.path.join(out, "model", "genome_factors")
    assert glob.glob(os.path.join(gf, "chrom=chr22", "*.parquet"))
    bs = header.bin_size
    first_signal = 16_102_262 // bs  # the real file's first non-zero interval
    checked, leaked = 0, set()
    for chrom, block, start, n in header.blocks():
        _, X = tensor.read_block(run.tensor_root, chrom, block, list(header.experiments))
        empty = impute.no_signal(X)
        if start + n <= first_signal:
            assert empty.all()
        GB = impute.read_gf(impute.gf_uri(gf, chrom, block))
        raw = impute.inverse(impute.impute_values(
            GB, model, [(j, k) for j in range(2) for k in range(2)]), header.transform)
        for t, name in enumerate(model.track_names()):
            bw = pyBigWig.open(layout.track_file(out, name))
            end = min((start + n) * bs, length)
            got = np.nan_to_num(bw.values(chrom, start * bs, end, numpy=True))
            bw.close()
            got = np.pad(got, (0, n * bs - got.size)).reshape(n, bs)[:, 0]
            assert (got[empty] == 0).all(), (name, block)
            # elsewhere the model's own values (this model is not stacked)
            np.testing.assert_allclose(got[~empty], raw[~empty, t], rtol=1e-5, atol=1e-6)
            # the constant the rule removes (clipped at 0 where the intercepts are negative)
            if (raw[empty, t] > 0).any():
                leaked.add(name)
        checked += int(empty.sum())
    assert checked >= first_signal
    assert leaked, "the test should show what the rule removes"
