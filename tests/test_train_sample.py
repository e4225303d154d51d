"""The training subset's tasks also measure the cell types' resemblance on the stacking sample
(one Spark job fewer): the same sums, bit for bit, as the resemblance job's, hence the same
nearest cell types and stacking weights. In process, no Spark."""

from __future__ import annotations

import numpy as np

from predictd import synthetic, train
from predictd.config import Config
from predictd.solvers import stacking

CELLS = ["c0", "c1", "c2", "c3"]
ASSAYS = ["a0", "a1", "a2"]


def test_packed_resemblance_sums_come_back_bit_for_bit():
    rng = np.random.default_rng(0)
    assay = np.array([0, 1, 0, 2, 1, 0])
    X = rng.normal(size=(300, assay.size)).astype(np.float32)
    X[rng.random(X.shape) < 0.1] = np.nan
    sums = stacking.resemblance_sums(X, assay, rng.random(300) < 0.5)
    packed = train.pack_resemblance(sums, assay)
    assert sum(b.size for b in packed["cross"]) == 9 + 4 + 1   # within each assay only
    back = train.unpack_resemblance(packed, assay)
    assert back.keys() == sums.keys()
    for k in sums:
        assert np.array_equal(back[k], sums[k])


def test_sampled_resemblance_equals_the_resemblance_job(tmp_path):
    obs = [(c, a) for c in CELLS for a in ASSAYS if (c, a) != ("c3", "a2")]
    root = str(tmp_path / "tensor")
    header = synthetic.write_tensor(root, 11_000, CELLS, ASSAYS, obs, block_bins=2048)
    # 6 blocks, 4 of them in the stacking sample, in 4 groups
    cfg = Config(block_bins=2048, stack_max_blocks=4, stack_sample=0.05, transform="none")
    exps = list(header.experiments)
    blocks = train.stack_blocks(header.blocks(), cfg.stack_max_blocks)
    assert train.uses_resemblance(cfg) and len(blocks) == 4 < len(header.blocks())
    pieces, sums = train.sample(None, header, root, str(tmp_path / "work"), exps, cfg, blocks)
    assert pieces and set(sums) == {(c, b) for c, b, _, _ in blocks}
    plain, none = train.sample(None, header, root, str(tmp_path / "work2"), exps, cfg)
    assert none == {} and [n for _, n in plain] == [n for _, n in pieces]
    groups = train.stack_groups(blocks)
    idx = {e: i for i, e in enumerate(header.experiments)}
    ea = header.exp_assay[[idx[e] for e in exps]]
    chrom_index = {c: i for i, (c, _) in enumerate(header.genome["chroms"])}
    job = [train.resemblance_task(g, (root, tuple(exps), ea, cfg.stack_sample, cfg.seed,
                                      chrom_index)) for g in groups]
    want = stacking.sum_resemblance_sums([p for p in job if p is not None])
    got = train.group_resemblance(groups, sums, ea)
    for k in want:
        assert np.array_equal(got[k], want[k])
    # hence the same stacking model as with the job of its own
    a = train.fit_stacking(None, header, root, exps, cfg, sums)
    b = train.fit_stacking(None, header, root, exps, cfg)
    assert a[2] is not None   # nearest cell types chosen
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert train.group_resemblance(groups, {}, ea) is None
