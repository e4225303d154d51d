"""Writing tracks of a stacked model: the per-assay sums stored with the genome factors let a
write task read only its target cell types' columns of each tensor block."""

from __future__ import annotations

import glob
import io
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from predictd import impute, layout, pipeline, tensor
from predictd.config import Config

pytestmark = pytest.mark.slow


def spy_on_block_reads(monkeypatch) -> list:
    """Record the columns of every tensor block read by the imputation from now on."""
    asked = []
    real = tensor.read_block

    def spy(root, chrom, blk, columns, *into):
        asked.append(list(columns))
        return real(root, chrom, blk, columns, *into)

    monkeypatch.setattr(impute.tensor, "read_block", spy)
    return asked


def test_stored_sums_write_the_same_tracks_from_fewer_columns(
        roadmap, roadmap_cell_types, write_roadmap_inputs, tmp_path, monkeypatch):
    small = {k: v[:80_000] for k, v in roadmap.items()
             if k.split(".")[0] in roadmap_cell_types[:3]}
    manifest, sizes = write_roadmap_inputs(small, tmp_path / "in")
    # 15 experiments of 5 assays: too few for the sums to pay off by default
    monkeypatch.setattr(impute, "SUMS_MIN_RATIO", 1)
    # the plain average (the similarity-weighted one needs every column, see below)
    cfg = Config(training_fraction=0.2, block_bins=16_384, max_iterations=4,
                 write_parallelism=2, stack_similar=0, stack_hinges=False)
    out = str(tmp_path / "out")
    run = pipeline.open_run(manifest, sizes, out, cfg, progress=False)
    pipeline.run_all(run, stages=("ingest", "train", "impute"))
    model = run.load_model()
    assert model.stack is not None and impute.stores_sums(model)
    monkeypatch.setattr(impute, "SUMS_MIN_RATIO", 4)
    assert not impute.stores_sums(model)  # 15 < 4 x 10 columns of sums
    monkeypatch.setattr(impute, "SUMS_MIN_RATIO", 1)
    gf = os.path.join(out, "model", "genome_factors")
    files = sorted(glob.glob(os.path.join(gf, "chrom=pilot", "*.parquet")))
    assert len(files) == 5  # 80,000 bins in blocks of 16,384
    n_assay = len(model.assays)
    header = tensor.read_header(run.tensor_root)
    aidx = {a: i for i, a in enumerate(model.assays)}
    ea = [aidx[a] for _, a in model.observed]
    for f in files:
        names = pq.read_schema(f).names
        assert names[:model.latent_factors + 3] == [
            "bin", "start", *(f"g{i}" for i in range(model.latent_factors)), "bG"]
        assert sum(c.startswith("stack_") for c in names) == 2 * n_assay
        # each row's coordinates, as the tensor block's: the factors can be read by position
        block = int(f.split("block=")[1][:6])
        want = pq.read_table(tensor.block_uri(run.tensor_root, "pilot", block),
                             columns=["bin", "start"])
        assert pq.read_table(f, columns=["bin", "start"]).equals(want)
    # the stored sums are those of the block's observed values, exactly
    block = int(files[2].split("block=")[1][:6])
    GB, (tot, cnt), empty = impute.read_gf_parts(files[2])
    _, X = tensor.read_block(run.tensor_root, "pilot", block,
                             [f"{c}.{a}" for c, a in model.observed])
    want_t, want_c = impute.stacking.assay_sums(X, ea, n_assay)
    np.testing.assert_array_equal(tot, want_t)
    np.testing.assert_array_equal(cnt, want_c)
    np.testing.assert_array_equal(GB, impute.read_gf(files[2]))

    # genome factors written before the sums were stored: the whole block is read
    legacy = str(tmp_path / "legacy_gf")
    shutil.copytree(gf, legacy)
    for f in glob.glob(os.path.join(legacy, "chrom=pilot", "*.parquet")):
        t = pq.read_table(f)
        keep = [c for c in t.column_names if not c.startswith("stack_")]
        buf = io.BytesIO()
        pq.write_table(t.select(keep), buf)
        with open(f, "wb") as fh:
            fh.write(buf.getvalue())
    assert impute.read_gf_parts(os.path.join(legacy, "chrom=pilot",
                                             os.path.basename(files[0])))[1] is None

    asked = spy_on_block_reads(monkeypatch)
    again = str(tmp_path / "again")
    impute.write_tracks(None, header, again, gf, model, cfg, root=run.tensor_root)
    # two write tasks: the first has cell types 0-1 (8 tracks of 15), the second 1-2
    firsts = {tuple(a) for a in asked}
    assert len(firsts) == 2 and all(len(a) < len(header.experiments) for a in firsts)
    for cols in firsts:
        assert len({c.split(".")[0] for c in cols}) == 2
    asked.clear()
    old = str(tmp_path / "old")
    impute.write_tracks(None, header, old, legacy, model, cfg, root=run.tensor_root)
    assert {tuple(a) for a in asked} == {tuple(header.experiments)}
    for name in model.track_names():
        a = open(layout.track_file(out, name), "rb").read()
        assert a == open(layout.track_file(again, name), "rb").read(), name
        assert a == open(layout.track_file(old, name), "rb").read(), name


@pytest.mark.parametrize("neighbours,hinges", [(0, False), (1, False), (1, True)])
def test_similarity_weighted_stack_reads_its_nearest_cell_types_columns(
        roadmap, roadmap_cell_types, write_roadmap_inputs, tmp_path, monkeypatch, neighbours,
        hinges):
    # weighing every other cell type (neighbours 0) needs every column: no sums are stored
    # and every write task reads whole blocks; with nearest cell types, the sums are stored
    # and a task reads its cell types' columns and their neighbours'
    small = {k: v[:40_000] for k, v in roadmap.items()
             if k.split(".")[0] in roadmap_cell_types[:3]}
    manifest, sizes = write_roadmap_inputs(small, tmp_path / "in")
    monkeypatch.setattr(impute, "SUMS_MIN_RATIO", 1)
    cfg = Config(training_fraction=0.2, block_bins=16_384, max_iterations=4,
                 write_parallelism=2, stack_similar_neighbours=neighbours,
                 stack_hinges=hinges)
    assert cfg.stack_similarity() == (1001, 0.2)
    out = str(tmp_path / "out")
    run = pipeline.open_run(manifest, sizes, out, cfg, progress=False)
    pipeline.run_all(run, stages=("ingest", "train"))
    model = run.load_model()
    assert model.stack_similar == (1001, 0.2)
    assert impute.stores_sums(model) == bool(neighbours)
    asked = spy_on_block_reads(monkeypatch)
    pipeline.run_all(run, stages=("impute",))
    header = tensor.read_header(run.tensor_root)
    gf = os.path.join(out, "model", "genome_factors")
    for f in glob.glob(os.path.join(gf, "chrom=pilot", "*.parquet")):
        assert any(c.startswith("stack_") for c in pq.read_schema(f).names) == bool(neighbours)
        # with them, the coarse sums of every training experiment the resemblance is
        # measured on, exactly those the block's columns give
        coarse = impute.coarse_uri(gf, "pilot", int(f.split("block=")[1][:6]))
        assert os.path.exists(coarse) == bool(neighbours)
        if neighbours:
            names = [f"{c}.{a}" for c, a in model.observed]
            _, X = tensor.read_block(run.tensor_root, "pilot",
                                     int(f.split("block=")[1][:6]), names)
            got = impute.read_coarse(coarse, names)
            assert got[0] == names
            np.testing.assert_array_equal(got[1], impute.stacking.coarse_sums(
                X.T, impute.stacking.similarity_step(1001)))
    assert asked
    if neighbours:
        near = model.stack_neighbours
        assert near.shape == (3, 5, 1) and (near >= 0).all()
        ci = {c: i for i, c in enumerate(model.cell_types)}
        for cols in asked:
            read = {(ci[e.split(".")[0]], model.assays.index(e.split(".")[1])) for e in cols}
            mine = {j for j in range(3) if all((j, a) in read for a in range(5))}
            # a task's cell types' own columns, each one's neighbour per assay, and the
            # neighbours' columns of the assays the two share (for their resemblance)
            want = {(j, a) for j in mine for a in range(5)}
            want |= {(int(near[j, a, 0]), b) for j in mine for a in range(5)
                     for b in range(5)}
            assert read == want
    else:
        assert model.stack_neighbours is None
        assert all(a == list(header.experiments) for a in asked)
    # the written tracks are the model's values from the whole block (with the hinges, bent
    # from the averages of the stored coarse sums as from those of the whole block)
    assert impute.stacking.has_hinges(model.stack.shape[2], 5, cfg.stack_windows(),
                               True) == hinges
    name = model.track_names()[4]
    j, k = divmod(4, len(model.assays))
    _, X = tensor.read_block(run.tensor_root, "pilot", 1, list(header.experiments))
    GB = impute.read_gf(impute.gf_uri(gf, "pilot", 1))
    want = impute.inverse(impute.model_values(model, GB, [(j, k)],
                                              (list(header.experiments), X)), header.transform)[:, 0]
    import pyBigWig
    bw = pyBigWig.open(layout.track_file(out, name))
    bs = header.bin_size
    got = np.array(bw.values("pilot", 16_384 * bs, 2 * 16_384 * bs))[::bs]
    bw.close()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if neighbours:
        # coarse sums stored on another grid (a reference solved with another resemblance
        # step) are not used: the columns are read whole, and the values are the same
        pairs = [(j, a) for a in range(5)]
        exps = list(header.experiments)
        members = [(gf, model)]
        W = impute.member_weights(1, list(range(j * 5, j * 5 + 5)), None)
        before = impute.block_values(run.tensor_root, exps, members, W, "pilot", 1, pairs)
        coarse = impute.coarse_uri(gf, "pilot", 1)
        names = [f"{c}.{a}" for c, a in model.observed]
        cells = impute.coarse_cells(model, 16_384)
        assert impute.read_coarse(coarse, names, cells) is not None
        impute.write_coarse(coarse, names, impute.stacking.coarse_sums(X.T[:len(names)], 5))
        assert impute.read_coarse(coarse, names, cells) is None
        asked.clear()
        after = impute.block_values(run.tensor_root, exps, members, W, "pilot", 1, pairs)
        assert set(asked[-1]) == set(impute.needed_columns(model, pairs))
        np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


def test_track_groups_are_contiguous_runs_of_at_most_n_tasks():
    # the write's tasks, and the bench's write_limit cuts the same ones
    from predictd.impute import track_groups
    assert track_groups(range(20), 2) == [list(range(10)), list(range(10, 20))]
    assert track_groups([3, 4, 7], 8) == [[3], [4], [7]]
    assert track_groups([5], 0) == [[5]]
